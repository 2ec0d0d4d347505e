"""LearnedKernel: meta-learning a learned update rule, by backpropagation or by ES.

The inner loop is the shared one (`MetaLearner.descend`) running the optimiser that the
learned rule builds from its weights (`kernel.optimizer(theta)`, see `metax.kernel`);
theta travels in `hparams.optimizer` beside the module's own hparams. The meta-gradient
comes from one of three estimators:

- "backprop": through the unrolled inner loop, as MAML does (Andrychowicz et al.,
  "Learning to learn by gradient descent by gradient descent", NeurIPS 2016,
  https://arxiv.org/abs/1606.04474), optionally truncated to the last `truncation` steps
  and with rematerialisation (`remat="block"`: memory O(sqrt(K)) in the K steps).
- "pes": Persistent Evolution Strategies (Vicol, Metz, Sohl-Dickstein, "Unbiased
  Gradient Estimation in Unrolled Computation Graphs with Persistent Evolution
  Strategies", ICML 2021, https://arxiv.org/abs/2112.13835), evosax's `PersistentES`.
- "noise_reuse": Noise-Reuse ES (Li, Vicol et al., "Noise-Reuse in Online Evolution
  Strategies", NeurIPS 2023, https://arxiv.org/abs/2304.12180), evosax's `NoiseReuseES`.

The ES estimators over partial unrolls live in `metax.learner.unrolled_es`; each
estimator is a value chosen once at construction, with `init` (the outer state) and
`update` (one meta-step).
"""

from typing import Any, Optional

import jax
import optax

from metax.data import MetaDataset
from metax.kernel.base import is_learned_optimizer
from metax.learner.base import MetaLearner, MetaLearnerState, Remat
from metax.learner.maml import ModelAgnosticMetaLearning
from metax.learner.unrolled_es import STRATEGIES, InnerCarry, UnrolledES
from metax.module.base import MetaModule

ESTIMATORS = ("backprop", *STRATEGIES)


class Backprop:
    """A `LearnedKernel` estimator: the meta-gradient by backpropagation through the
    unrolled inner loop, applied by `optim_fn_outer` (MAML's update).

    Example:
      >>> from metax.learner.learned_kernel import Backprop
      >>> Backprop(optax.sgd(0.1)).init(jax.random.PRNGKey(0), jnp.zeros(2))
      (EmptyState(), EmptyState())
    """

    def __init__(self, optim_fn_outer: optax.GradientTransformation) -> None:
        self.optim_fn_outer = optim_fn_outer

    def init(self, rng: jax.Array, hparams: Any) -> optax.OptState:
        """The outer optimiser's state for `hparams` (`rng` is unused)."""
        return self.optim_fn_outer.init(hparams)

    def update(self, learner: MetaLearner, rng: jax.Array, meta_state: MetaLearnerState, metabatch: MetaDataset):
        """`MetaLearner.update`: vmapped per-task meta-gradients, averaged and applied."""
        return MetaLearner.update(learner, rng, meta_state, metabatch)


class LearnedKernel(ModelAgnosticMetaLearning):
    """Meta-learns a learned update rule (and the module's hparams) over any module.

    Args:
      meta_model, batch_size, steps_inner, extra_metrics: see `MetaLearner`.
      kernel: a learned optimiser (`metax.kernel.CoordinatewiseKernel`,
        `MetadynamicOptimizer`, `MetaSGD`, ...): `init(rng, params) -> theta`,
        `optimizer(theta) -> optax.GradientTransformation`.
      optim_fn_outer: the outer optimiser, applied to the backpropagated meta-gradient or
        to the ES gradient estimate.
      estimator: "backprop", "pes" or "noise_reuse" (see the module docstring).
      truncation: backprop: gradients flow through the last `truncation` inner steps
        only (the shared loop's option, see `MetaLearner`); ES: the length of a partial
        unroll (must divide `steps_inner`). None: the whole loop.
      remat: backprop only: what the backward pass recomputes (True: each step; "block" or
        an int: blocks of steps; see `MetaLearner`).
      first_order: backprop only: treat inner gradients as constants.
      es_kwargs: ES only: `population_size` (even; default 16), `sigma_init` (the
        perturbation std, default 0.1) or `std_schedule`, `fitness_shaping_fn`.

    The estimator is chosen once, here: `gradient_estimator` is a `Backprop` or an
    `UnrolledES` (`metax.learner.unrolled_es`), and `reset` / `update` only call its
    `init` / `update`.

    Example:
      >>> kernel = metax.kernel.CoordinatewiseKernel(hidden_sizes=(16,), step_size=0.01)
      >>> learner = metax.learner.LearnedKernel(meta_model, None, 20, kernel, optax.adam(1e-3), truncation=10)
      >>> meta_state = learner.reset(jax.random.PRNGKey(0), sample_input)

    `jax.jit(learner.update)(rng, meta_state, metabatch)` then takes one meta-step.
    """

    def __init__(
        self,
        meta_model: MetaModule,
        batch_size: Optional[int],
        steps_inner: int,
        kernel: Any,
        optim_fn_outer: optax.GradientTransformation,
        *,
        estimator: str = "backprop",
        truncation: Optional[int] = None,
        remat: Remat = False,
        first_order: bool = False,
        es_kwargs: Optional[dict] = None,
        **options: Any,
    ) -> None:
        if not is_learned_optimizer(kernel):
            raise TypeError(
                f"LearnedKernel needs a learned update rule (metax.kernel.CoordinatewiseKernel, "
                f"MetadynamicOptimizer, MetaSGD, ...), got {type(kernel).__name__}; for a fixed "
                "optax optimiser use ModelAgnosticMetaLearning."
            )
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")
        self.estimator = estimator
        # The estimator is chosen here, once: `reset` and `update` only call it.
        if estimator == "backprop":
            if es_kwargs:
                raise ValueError("es_kwargs apply to estimator='pes' or 'noise_reuse', not 'backprop'.")
            super().__init__(
                meta_model, batch_size, steps_inner, kernel, optim_fn_outer, first_order,
                truncation=truncation, remat=remat, **options,
            )
            self.gradient_estimator = Backprop(optim_fn_outer)
            return
        if remat is not False or first_order:
            raise ValueError(f"remat and first_order apply to estimator='backprop'; {estimator!r} takes no gradient.")
        super().__init__(meta_model, batch_size, steps_inner, kernel, optim_fn_outer, **options)
        self.gradient_estimator = UnrolledES(estimator, self.steps_inner, truncation, es_kwargs, optim_fn_outer)

    def reset(self, rng: jax.Array, sample_input: jax.Array) -> MetaLearnerState:
        hparams, hstate = self.reset_hparams(rng, sample_input)
        return MetaLearnerState(hparams=hparams, hstate=hstate, optim=self.gradient_estimator.init(rng, hparams))

    def update(self, rng: jax.Array, meta_state: MetaLearnerState, metabatch: MetaDataset):
        """One meta-update by the estimator (see the module docstring and `UnrolledES.update`)."""
        return self.gradient_estimator.update(self, rng, meta_state, metabatch)

    def strategy(self, hparams: Any):
        """The evosax strategy of an ES estimator over hparams shaped like `hparams` (cached)."""
        return self.gradient_estimator.engine.strategy(hparams)

    def continue_descent(self, rng, carry: InnerCarry, hparams, energy, optimizer, steps: int):
        """`steps` steps of the shared loop continuing `carry`, optimiser state included."""
        state, params, losses, _, opt_state = self.descend(
            rng, carry.state, carry.params, hparams, energy, optimizer, steps,
            opt_state=carry.opt_state, return_opt_state=True,
        )
        return InnerCarry(state, params, opt_state), losses

    def _start(self, rng, hstate, hparams, task: MetaDataset) -> InnerCarry:
        params, state = self.meta_model.reset_params(rng, hparams, hstate, task.train.x)
        return InnerCarry(state, params, self.inner_optimizer(hparams).init(params))
