"""Training classifiers while logging their optimisation dynamics inside the compiled step.

One epoch is a `lax.scan` over mini-batches; every step returns its measurements as scan
outputs, so an epoch hands back arrays `(steps, ...)` and the host is visited once per
epoch, never per step. Runs of the same architecture and optimiser (learning rates and
seeds differ) train together under `jax.vmap`.

Per step `t` (weights `W_t` before the update, gradient `g_t`, update `U_t = W_{t+1} - W_t`):

- `loss`, `loss_delta` (`loss_t - loss_{t-1}`, NaN at the first step), `train_acc` on the batch;
  exponential moving averages `loss_ema` (decay 0.9), `loss_ema_slow` (0.99), `acc_ema` (0.9);
- `val_acc` on the validation set every `val_every` steps and at the end of each epoch (NaN
  in between), `val_acc_last` the latest one (the untrained network's before the first);
- `grad_norm` `||g_t||`, `weight_norm` `||W_t||`, `update_norm` `||U_t||`, `update_ratio`
  `||U_t|| / ||W_t||`, each also per layer (`*_layers`, `(num_layers,)`, layers in sorted
  haiku module order); norms are Euclidean over all entries (weights and biases);
- `lr` (the rate used at step t), `optimizer` id, `step`, `epoch`, `batch`, `progress`
  (epochs completed after the step), and the architecture code `depth`, `width`,
  `activation`, `kind` (see `Architecture.encoding`).
"""

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax.dynamics.architectures import OPTIMIZER_NAMES, Architecture, build_network, make_optimizer
from metax.dynamics.data import ClassificationData

EMA_FAST = 0.9
EMA_SLOW = 0.99

# Called after every step with (policy_params, that step's log, global step) -> next learning rate.
LRPolicy = Callable[[Any, dict, jax.Array], jax.Array]


class Trackers(NamedTuple):
    """Running statistics carried across steps; every field is a scalar."""

    loss_prev: jax.Array
    loss_ema: jax.Array
    loss_ema_slow: jax.Array
    acc_ema: jax.Array
    val_acc_last: jax.Array


class RunState(NamedTuple):
    """One run's training state (a leading run axis when runs are vmapped).

    Example:
      >>> from metax.dynamics import Architecture, ClassificationData, init_runs
      >>> x, y = np.zeros((8, 8, 8, 1), np.float32), np.arange(8, dtype=np.int32)
      >>> data = ClassificationData(x, y, x, y, x, y, num_classes=10)
      >>> arch = Architecture("mlp", 1, 4, "relu")
      >>> state = init_runs(arch, "adam", [0.01, 0.01, 0.01], [0, 1, 2], data)
      >>> state._fields
      ('params', 'opt_state', 'trackers')
      >>> [w.shape for w in jax.tree_util.tree_leaves(state.params)]  # three runs: a leading run axis
      [(3, 4), (3, 64, 4), (3, 10), (3, 4, 10)]
      >>> state.trackers.loss_ema.shape
      (3,)
    """

    params: hk.Params
    opt_state: optax.OptState  # learning rate in opt_state.hyperparams["learning_rate"]
    trackers: Trackers


class TrainResult(NamedTuple):
    """What `train_runs` returns; arrays have a leading run axis `R`.

    Attributes:
      logs: every logged quantity, `(R, steps_done)` (per-layer ones `(R, steps_done, L)`).
      val_acc_epochs: validation accuracy after each epoch, `(R, epochs_done)`.
      test_acc_epochs: test accuracy after each epoch, `(R, epochs_done)`.
      epochs_to_target: first epoch (1-based) whose validation accuracy reached the target,
        `(R,)`, -1 where it never did or no target was given.
      layer_names: the `L` layers of the per-layer columns.
      state: the final `RunState`.

    Example:
      >>> from metax.dynamics import TrainResult
      >>> result = TrainResult(
      ...     logs={"loss": np.zeros((2, 6), np.float32)},  # 2 runs, 3 epochs of 2 steps
      ...     val_acc_epochs=np.array([[0.5, 0.8, 0.9], [0.3, 0.4, 0.6]]),
      ...     test_acc_epochs=np.array([[0.5, 0.8, 0.9], [0.3, 0.4, 0.6]]),
      ...     epochs_to_target=np.array([2, -1]),  # target 0.8: run 0 at epoch 2, run 1 never
      ...     layer_names=("linear_0", "linear_1"),
      ...     state=None,
      ... )
      >>> result.logs["loss"].shape, result.val_acc_epochs[:, -1].tolist()
      ((2, 6), [0.9, 0.6])
      >>> (result.epochs_to_target > 0).tolist()
      [True, False]
    """

    logs: dict
    val_acc_epochs: np.ndarray
    test_acc_epochs: np.ndarray
    epochs_to_target: np.ndarray
    layer_names: tuple
    state: RunState


def layer_norms(tree: hk.Params) -> jax.Array:
    """Euclidean norm of each top-level haiku module's leaves, `(num_layers,)` in sorted order.

    Example:
      >>> from metax.dynamics import layer_norms
      >>> params = {"readout": {"w": jnp.full((1,), 3.0)}, "hidden": {"w": jnp.ones((2, 1)), "b": jnp.ones(2)}}
      >>> layer_norms(params).tolist()  # "hidden" (sqrt(2 + 2)) sorts before "readout"
      [2.0, 3.0]
    """
    return jnp.stack(
        [jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree[name]))) for name in sorted(tree)]
    )


def _global(norms: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(norms)))


def _loss_and_accuracy(apply, params, images, labels):
    logits = apply(params, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def _accuracy(apply, params, images, labels):
    return _loss_and_accuracy(apply, params, images, labels)[1]


def make_epoch_fn(
    arch: Architecture,
    optimizer: str,
    num_classes: int,
    *,
    batch_size: int,
    steps_per_epoch: int,
    val_every: int,
    lr_policy: Optional[LRPolicy] = None,
) -> Callable:
    """One epoch of one run as a pure function (vmap it over runs).

    Returns `epoch(state, policy_params, order, train_x, train_y, val_x, val_y, test_x, test_y,
    epoch_index) -> (state, logs, test_accuracy)`: `order` holds the epoch's shuffled image
    indices (`epoch_order`), `logs` maps each logged name to an array `(steps_per_epoch, ...)`
    and the test accuracy is measured after the epoch's last step.
    With `lr_policy`, the rate for step t+1 is `lr_policy(policy_params, log_t, t)` (computed
    in the graph from step t's measurements); without, the rate stays as initialised.

    Example:
      >>> from metax.dynamics import Architecture, ClassificationData, init_runs, make_epoch_fn
      >>> x, y = np.zeros((8, 8, 8, 1), np.float32), np.arange(8, dtype=np.int32)
      >>> data = ClassificationData(x, y, x, y, x, y, num_classes=10)
      >>> arch = Architecture("mlp", 1, 4, "relu")
      >>> epoch = make_epoch_fn(arch, "sgd", 10, batch_size=4, steps_per_epoch=2, val_every=1)
      >>> state = jax.tree_util.tree_map(lambda a: a[0], init_runs(arch, "sgd", [0.1], [0], data))  # one run
      >>> order = jnp.arange(8)
      >>> _, logs, test_acc = jax.eval_shape(epoch, state, None, order, x, y, x, y, x, y, 0)  # traced, not run
      >>> logs["loss"].shape, logs["grad_norm_layers"].shape, test_acc.shape
      ((2,), (2, 2), ())
      >>> {"lr", "update_ratio", "val_acc", "depth"} <= set(logs)
      True
    """
    apply = build_network(arch, num_classes).apply
    opt = make_optimizer(optimizer, 0.0)  # the rate actually used is read from the state
    codes = {**arch.encoding(), "optimizer": OPTIMIZER_NAMES.index(optimizer)}
    grad_fn = jax.value_and_grad(functools.partial(_loss_and_accuracy, apply), has_aux=True)

    def epoch(state: RunState, policy_params, order, train_x, train_y, val_x, val_y, test_x, test_y, epoch_index):
        # The untrained network's validation accuracy stands in until the first measurement.
        initial = jax.lax.cond(
            epoch_index == 0,
            lambda: _accuracy(apply, state.params, val_x, val_y),
            lambda: state.trackers.val_acc_last.astype(jnp.float32),
        )
        state = state._replace(trackers=state.trackers._replace(val_acc_last=initial))

        def step(state: RunState, i):
            global_step = epoch_index * steps_per_epoch + i
            batch = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
            (loss, acc), grads = grad_fn(state.params, train_x[batch], train_y[batch])
            lr = state.opt_state.hyperparams["learning_rate"]
            updates, opt_state = opt.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            grad_layers, weight_layers, update_layers = (layer_norms(t) for t in (grads, state.params, updates))
            weight_norm, update_norm = _global(weight_layers), _global(update_layers)

            first = global_step == 0
            old = state.trackers
            ema = lambda decay, prev, x: jnp.where(first, x, decay * prev + (1 - decay) * x)
            do_val = ((global_step + 1) % val_every == 0) | (i == steps_per_epoch - 1)
            val_acc = jax.lax.cond(
                do_val, lambda p: _accuracy(apply, p, val_x, val_y), lambda p: jnp.full((), jnp.nan, loss.dtype), params
            )
            trackers = Trackers(
                loss_prev=loss,
                loss_ema=ema(EMA_FAST, old.loss_ema, loss),
                loss_ema_slow=ema(EMA_SLOW, old.loss_ema_slow, loss),
                acc_ema=ema(EMA_FAST, old.acc_ema, acc),
                val_acc_last=jnp.where(do_val, val_acc, old.val_acc_last),
            )
            log = {
                "step": global_step,
                "epoch": epoch_index,
                "batch": i,
                "progress": (global_step + 1) / steps_per_epoch,
                "loss": loss,
                "loss_delta": loss - old.loss_prev,
                "loss_ema": trackers.loss_ema,
                "loss_ema_slow": trackers.loss_ema_slow,
                "train_acc": acc,
                "acc_ema": trackers.acc_ema,
                "val_acc": val_acc,
                "val_acc_last": trackers.val_acc_last,
                "grad_norm": _global(grad_layers),
                "grad_norm_layers": grad_layers,
                "weight_norm": weight_norm,
                "weight_norm_layers": weight_layers,
                "update_norm": update_norm,
                "update_norm_layers": update_layers,
                "update_ratio": update_norm / weight_norm,
                "update_ratio_layers": update_layers / weight_layers,
                "lr": lr,
                **{name: jnp.asarray(code, jnp.int32) for name, code in codes.items()},
            }
            if lr_policy is not None:
                next_lr = jnp.asarray(lr_policy(policy_params, log, global_step), lr.dtype)
                opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": next_lr})
            return RunState(params, opt_state, trackers), log

        state, logs = jax.lax.scan(step, state, jnp.arange(steps_per_epoch))
        return state, logs, _accuracy(apply, state.params, test_x, test_y)

    return epoch


@functools.lru_cache(maxsize=64)
def _compiled_epoch(arch, optimizer, num_classes, batch_size, steps_per_epoch, val_every, lr_policy):
    epoch = make_epoch_fn(
        arch, optimizer, num_classes, batch_size=batch_size, steps_per_epoch=steps_per_epoch, val_every=val_every, lr_policy=lr_policy
    )
    return jax.jit(jax.vmap(epoch, in_axes=(0, None, 0, None, None, None, None, None, None, None)))


def init_params(arch: Architecture, num_classes: int, sample: np.ndarray, seed: int) -> hk.Params:
    """LeCun initialisation on the host: every weight ~ N(0, 1/fan_in) truncated at two
    standard deviations, every bias zero (fan_in: all but the last axis of the kernel).

    Drawn with numpy from `seed` so that starting a new architecture compiles nothing: XLA
    on CPU takes seconds to compile a vmapped random initialiser, longer than a whole
    sweep run of these networks trains.
    """
    shapes = jax.eval_shape(build_network(arch, num_classes).init, jax.random.PRNGKey(0), sample)
    rng = np.random.default_rng([seed, 0])

    def draw(path, leaf):
        if path[-1].key == "b":
            return np.zeros(leaf.shape, np.float32)
        std = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
        values = rng.standard_normal(leaf.shape)
        while np.any(bad := np.abs(values) > 2.0):
            values[bad] = rng.standard_normal(int(bad.sum()))
        return (std * values).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def epoch_order(seed: int, epoch_index: int, num_train: int) -> np.ndarray:
    """The shuffled order of the training images for one run's epoch (host-side, no compile)."""
    return np.random.default_rng([seed, 1, epoch_index]).permutation(num_train).astype(np.int32)


def init_runs(
    arch: Architecture, optimizer: str, learning_rates: Sequence[float], seeds: Sequence[int], data: ClassificationData
) -> RunState:
    """Initial states of `R = len(seeds)` runs (one learning rate per run); a run's
    initialisation and data order depend only on its seed, so runs that differ only in
    learning rate start from the same weights and see the same batches.

    Example:
      >>> from metax.dynamics import Architecture, ClassificationData, init_runs
      >>> x, y = np.zeros((8, 8, 8, 1), np.float32), np.arange(8, dtype=np.int32)
      >>> data = ClassificationData(x, y, x, y, x, y, num_classes=10)
      >>> arch = Architecture("mlp", 1, 4, "relu")
      >>> state = init_runs(arch, "sgd", [0.1, 0.3], [0, 0], data)
      >>> state.opt_state.hyperparams["learning_rate"].tolist()
      [0.1, 0.3]
      >>> w = state.params["multilayer_perceptron/~/linear_0/linear"]["w"]
      >>> w.shape, bool(jnp.all(w[0] == w[1]))  # same seed, same initial weights
      ((2, 64, 4), True)
    """
    if len(learning_rates) != len(seeds) or not len(seeds):
        raise ValueError(f"need one learning rate per seed, got {len(learning_rates)} rates and {len(seeds)} seeds.")
    sample = np.asarray(data.train_x[:1])
    per_run = [init_params(arch, data.num_classes, sample, int(seed)) for seed in seeds]
    params = jax.tree_util.tree_map(lambda *leaves: jnp.asarray(np.stack(leaves)), *per_run)
    opt_state = jax.vmap(lambda p, lr: make_optimizer(optimizer, lr).init(p))(params, jnp.asarray(learning_rates, jnp.float32))
    nan = jnp.full((len(seeds),), jnp.nan, jnp.float32)
    return RunState(params, opt_state, Trackers(nan, nan, nan, nan, nan))  # val_acc_last: set by the first epoch


def steps_per_epoch(data: ClassificationData, batch_size: int) -> int:
    """Mini-batches per epoch (the incomplete last batch is dropped); raises if there are none."""
    steps = data.train_x.shape[0] // batch_size
    if steps < 1:
        raise ValueError(f"batch_size={batch_size} exceeds the {data.train_x.shape[0]} training images; use a smaller batch_size.")
    return steps


def train_runs(
    arch: Architecture,
    optimizer: str,
    learning_rates: Sequence[float],
    seeds: Sequence[int],
    data: ClassificationData,
    *,
    epochs: int,
    batch_size: int,
    val_every: int,
    lr_policy: Optional[LRPolicy] = None,
    policy_params: Any = None,
    target_accuracy: Optional[Any] = None,
    on_epoch: Optional[Callable[[int], None]] = None,
) -> TrainResult:
    """Trains `R` runs of one architecture and optimiser in parallel (vmap), one compiled
    epoch at a time, for `epochs` epochs or until every run's validation accuracy has reached
    `target_accuracy` (a scalar or one value per run), whichever comes first.

    Args:
      learning_rates, seeds: one entry per run.
      lr_policy, policy_params: an in-graph learning-rate controller (see `make_epoch_fn`).
      on_epoch: called with the number of epochs done after each epoch (progress bars).

    Example:
      Settings are checked before anything compiles (a real call trains for seconds):

      >>> from metax.dynamics import Architecture, ClassificationData, train_runs
      >>> x, y = np.zeros((8, 8, 8, 1), np.float32), np.arange(8, dtype=np.int32)
      >>> data = ClassificationData(x, y, x, y, x, y, num_classes=10)
      >>> arch = Architecture("mlp", 1, 4, "relu")
      >>> train_runs(arch, "sgd", [0.1], [0], data, epochs=1, batch_size=32, val_every=1)
      Traceback (most recent call last):
        ...
      ValueError: batch_size=32 exceeds the 8 training images; use a smaller batch_size.
    """
    if epochs < 1 or batch_size < 1 or val_every < 1:
        raise ValueError(f"epochs, batch_size and val_every must be positive, got {epochs}, {batch_size}, {val_every}.")
    steps = steps_per_epoch(data, batch_size)
    epoch_fn = _compiled_epoch(arch, optimizer, data.num_classes, batch_size, steps, val_every, lr_policy)
    arrays = [jnp.asarray(a) for a in (data.train_x, data.train_y, data.val_x, data.val_y, data.test_x, data.test_y)]
    state = init_runs(arch, optimizer, learning_rates, seeds, data)
    runs = len(seeds)
    target = None if target_accuracy is None else np.broadcast_to(np.asarray(target_accuracy, np.float64), (runs,))
    reached = np.full((runs,), -1, np.int64)
    chunks, val_epochs, test_epochs = [], [], []
    for epoch_index in range(epochs):
        order = np.stack([epoch_order(int(seed), epoch_index, data.train_x.shape[0]) for seed in seeds])
        state, logs, test_acc = epoch_fn(state, policy_params, order, *arrays, jnp.asarray(epoch_index, jnp.int32))
        chunks.append(jax.device_get(logs))
        val_epochs.append(np.asarray(chunks[-1]["val_acc"][:, -1]))
        test_epochs.append(np.asarray(test_acc))
        if on_epoch is not None:
            on_epoch(epoch_index + 1)
        if target is not None:
            newly = (reached < 0) & (val_epochs[-1] >= target)
            reached[newly] = epoch_index + 1
            if np.all(reached > 0):
                break
    logs = {name: np.concatenate([chunk[name] for chunk in chunks], axis=1) for name in chunks[0]}
    layer_names = tuple(sorted(state.params))
    return TrainResult(logs, np.stack(val_epochs, 1), np.stack(test_epochs, 1), reached, layer_names, state)
