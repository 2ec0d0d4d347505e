"""Synthetic regression task families, drawn on the device from a PRNG key.

Every family is a pure function `family(rng, shots_train, shots_test) -> MetaDataset` for
one task, so `jax.vmap` over keys gives a meta-batch and `jax.jit` compiles the sampler.
Inputs are `(shots, 1)` with x ~ U[-5, 5]; targets are `(shots, 1)`.

- `sinusoid`: y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi]; the task of MAML
  (Finn et al., 2017, https://arxiv.org/abs/1703.03400), Meta-SGD and CAVIA.
- `linear`: y = a x + b, a, b ~ U[-5, 5]; the tasks of Reptile's Koi demo.
- `family`: one of five 1-D function families, chosen uniformly per task, with the family
  id in `info["family"]` (one int per sample): 0 two-harmonic sums, 1 lines with small
  slope, 2 quadratics rescaled per task to [-1, 1], 3 sawtooth waves, 4 small-amplitude
  sines.
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from metax.data.base import Dataset, MetaDataset

SampleTask = Callable[[jax.Array], MetaDataset]

X_RANGE = (-5.0, 5.0)
FAMILY_NAMES = ("harmonic", "line", "quadratic", "sawtooth", "small_sine")


def _inputs(rng: jax.Array, shots: int) -> jax.Array:
    return jax.random.uniform(rng, (shots, 1), minval=X_RANGE[0], maxval=X_RANGE[1])


def _as_task(x: jax.Array, y: jax.Array, shots_train: int, info: dict | None = None) -> MetaDataset:
    info = {} if info is None else info
    head = {key: value[:shots_train] for key, value in info.items()}
    tail = {key: value[shots_train:] for key, value in info.items()}
    return MetaDataset(
        train=Dataset(x[:shots_train], y[:shots_train], head),
        test=Dataset(x[shots_train:], y[shots_train:], tail),
    )


def sinusoid(rng: jax.Array, shots_train: int, shots_test: int) -> MetaDataset:
    """One sinusoid task: y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi].

    Example:
      >>> task = metax.data.sinusoid(jax.random.PRNGKey(0), shots_train=10, shots_test=10)
      >>> bool(jnp.all(jnp.abs(task.train.y) <= 5.0))
      True
    """
    rng_amp, rng_phase, rng_x = jax.random.split(rng, 3)
    amplitude = jax.random.uniform(rng_amp, (), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(rng_phase, (), minval=0.0, maxval=math.pi)
    x = _inputs(rng_x, shots_train + shots_test)
    return _as_task(x, amplitude * jnp.sin(x - phase), shots_train)


def linear(rng: jax.Array, shots_train: int, shots_test: int) -> MetaDataset:
    """One line: y = a x + b with a, b ~ U[-5, 5].

    Example:
      >>> task = metax.data.linear(jax.random.PRNGKey(0), shots_train=10, shots_test=10)
      >>> task.train.x.shape, task.test.y.shape
      ((10, 1), (10, 1))
    """
    rng_coef, rng_x = jax.random.split(rng)
    slope, offset = jax.random.uniform(rng_coef, (2,), minval=-5.0, maxval=5.0)
    x = _inputs(rng_x, shots_train + shots_test)
    return _as_task(x, slope * x + offset, shots_train)


def _harmonic(rng: jax.Array, x: jax.Array) -> jax.Array:
    rng_a, rng_w, rng_p = jax.random.split(rng, 3)
    amp = jax.random.uniform(rng_a, (2,), minval=0.1, maxval=1.0)
    freq = jax.random.uniform(rng_w, (), minval=0.5, maxval=1.5)
    phase = jax.random.uniform(rng_p, (2,), minval=0.0, maxval=2 * math.pi)
    return amp[0] * jnp.sin(freq * x + phase[0]) + amp[1] * jnp.sin(2 * freq * x + phase[1])


def _line(rng: jax.Array, x: jax.Array) -> jax.Array:
    rng_s, rng_b = jax.random.split(rng)
    slope = jax.random.uniform(rng_s, (), minval=-0.2, maxval=0.2)
    offset = jax.random.uniform(rng_b, (), minval=-1.0, maxval=1.0)
    return slope * x + offset


def _quadratic(rng: jax.Array, x: jax.Array) -> jax.Array:
    c2, c1, c0 = jax.random.normal(rng, (3,))
    poly = lambda t: c2 * t**2 + c1 * t + c0
    # Range over [-5, 5]: the end points and, if inside, the vertex.
    lo, hi = X_RANGE
    vertex = jnp.clip(-c1 / (2 * c2 + jnp.where(c2 == 0, 1e-12, 0.0)), lo, hi)
    values = jnp.stack([poly(lo), poly(hi), poly(vertex)])
    v_min, v_max = values.min(), values.max()
    return 2 * (poly(x) - v_min) / jnp.maximum(v_max - v_min, 1e-6) - 1


def _sawtooth(rng: jax.Array, x: jax.Array) -> jax.Array:
    rng_a, rng_p, rng_s = jax.random.split(rng, 3)
    amp = jax.random.uniform(rng_a, (), minval=0.1, maxval=1.0)
    period = jax.random.uniform(rng_p, (), minval=1.0, maxval=4.0)
    shift = jax.random.uniform(rng_s, (), minval=0.0, maxval=period)
    frac = jnp.mod((x - shift) / period, 1.0)
    return amp * (2 * frac - 1)


def _small_sine(rng: jax.Array, x: jax.Array) -> jax.Array:
    rng_a, rng_p = jax.random.split(rng)
    amp = jax.random.uniform(rng_a, (), minval=0.1, maxval=1.0)
    phase = jax.random.uniform(rng_p, (), minval=0.0, maxval=math.pi)
    return amp * jnp.sin(x - phase)


_FAMILY_FNS = (_harmonic, _line, _quadratic, _sawtooth, _small_sine)


def family(rng: jax.Array, shots_train: int, shots_test: int) -> MetaDataset:
    """One task from a uniformly chosen family of five; `info["family"]` holds its id.

    Example:
      >>> task = jax.eval_shape(lambda key: metax.data.family(key, 10, 10), jax.random.PRNGKey(0))
      >>> task.train.info["family"].shape  # the family's id, per sample
      (10,)
    """
    rng_fam, rng_fn, rng_x = jax.random.split(rng, 3)
    family_id = jax.random.randint(rng_fam, (), 0, len(_FAMILY_FNS))
    x = _inputs(rng_x, shots_train + shots_test)
    y = jax.lax.switch(family_id, _FAMILY_FNS, rng_fn, x)
    labels = jnp.full((shots_train + shots_test,), family_id, dtype=jnp.int32)
    return _as_task(x, y, shots_train, {"family": labels})


TASK_FAMILIES: dict[str, Callable[[jax.Array, int, int], MetaDataset]] = {
    "sinusoid": sinusoid,
    "family": family,
    "linear": linear,
}


def get_task_family(name: str) -> Callable[[jax.Array, int, int], MetaDataset]:
    """Looks up a task family by name.

    Raises:
      ValueError: for an unknown name, listing the known ones.

    Example:
      >>> metax.data.get_task_family("sinusoid") is metax.data.sinusoid
      True
    """
    if name not in TASK_FAMILIES:
        raise ValueError(
            f"Unknown task family {name!r}; known families: {', '.join(sorted(TASK_FAMILIES))}. "
            "For your own tasks pass a function sample_task(key) -> MetaDataset to "
            "metax.data.MetaBatchStream."
        )
    return TASK_FAMILIES[name]


def make_task_sampler(name: str, shots_train: int, shots_test: int) -> SampleTask:
    """`sample_task(key) -> MetaDataset` for a named family and fixed shot counts.

    Example:
      >>> sample_task = metax.data.make_task_sampler("linear", shots_train=5, shots_test=20)
      >>> task = sample_task(jax.random.PRNGKey(0))
      >>> task.train.x.shape, task.test.x.shape
      ((5, 1), (20, 1))
    """
    if shots_train < 1 or shots_test < 0:
        raise ValueError(f"shots_train must be >= 1 and shots_test >= 0, got {shots_train}, {shots_test}.")
    return functools.partial(get_task_family(name), shots_train=shots_train, shots_test=shots_test)
