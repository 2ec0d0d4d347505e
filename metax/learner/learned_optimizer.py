"""A module whose hparams also carry a learned inner optimiser's theta.

A learned optimiser (`metax.kernel`: `init(rng, params) -> theta`,
`optimizer(theta) -> optax.GradientTransformation`) knows nothing of modules. When a
learner is given one as `optim_fn_inner`, it wraps its module in `WithLearnedOptimizer`:
the hparams become `LearnedOptimizerHParams(module, optimizer)`, so theta is
meta-learned exactly like the module's own hparams (Andrychowicz et al., "Learning to
learn by gradient descent by gradient descent", NeurIPS 2016,
https://arxiv.org/abs/1606.04474; Li et al., "Meta-SGD", 2017,
https://arxiv.org/abs/1707.09835), while the wrapped module and its energies see only
their own hparams.
"""

from typing import Any, NamedTuple

import jax

from metax.energy import EnergyFunction
from metax.module.base import MetaModule


class LearnedOptimizerHParams(NamedTuple):
    """Hparams of a module run with a learned inner optimiser.

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(
      ...     meta_model, None, 1, metax.kernel.ScalarLR(0.1), optax.adam(1e-3))
      >>> state = learner.reset(jax.random.PRNGKey(0), sample_input)
      >>> type(state.hparams).__name__, state.hparams._fields
      ('LearnedOptimizerHParams', ('module', 'optimizer'))
    """

    module: Any  # the module's own hparams
    optimizer: Any  # the learned optimiser's meta-parameters theta


class _ModuleHParamsEnergy(EnergyFunction):
    """Calls an energy with the module's own hparams (the optimiser's theta stripped)."""

    def __init__(self, energy: EnergyFunction) -> None:
        super().__init__(energy.reduction)
        self.energy = energy

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        return self.energy(rng, pred, target, params, hparams.module, state, hstate, info)

    def check_target(self, pred, target, argument):
        self.energy.check_target(pred, target, argument)


class WithLearnedOptimizer(MetaModule):
    """A module whose hparams also carry a learned optimiser's theta.

    Learners build this themselves when `optim_fn_inner` is a learned optimiser; the
    wrapped module sees only its own hparams. Its attributes stay reachable through the
    wrapper, the `MetaModule` properties `init_keys` and `anchors_init` included.

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(
      ...     meta_model, None, 1, metax.kernel.ScalarLR(0.1), optax.adam(1e-3))
      >>> type(learner.meta_model).__name__, learner.meta_model.module is meta_model
      ('WithLearnedOptimizer', True)
    """

    def __init__(self, module: MetaModule, learned_optimizer: Any) -> None:
        super().__init__(_ModuleHParamsEnergy(module.loss_fn_inner), _ModuleHParamsEnergy(module.loss_fn_outer))
        self.module = module
        self.learned_optimizer = learned_optimizer

    def __getattr__(self, name: str) -> Any:
        # Attributes of the wrapped module (base_learner, output_dim, ...) stay reachable.
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    # Properties defined on MetaModule are found on the wrapper's class, so __getattr__
    # never sees them: forward them explicitly.
    @property
    def init_keys(self) -> dict[str, str]:
        return self.module.init_keys

    @property
    def anchors_init(self) -> bool:
        return self.module.anchors_init

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        return self.module(rng, state, hstate, params, hparams.module, input, is_training)

    def reset_hparams(self, rng, sample_input):
        # The module draws from `rng` itself: the same seed gives the same init with a
        # learned or a plain optimiser.
        rng_params, rng_theta = jax.random.split(jax.random.fold_in(rng, 1))
        hparams, hstate = self.module.reset_hparams(rng, sample_input)
        params, _ = self.module.reset_params(rng_params, hparams, hstate, sample_input)
        theta = self.learned_optimizer.init(rng_theta, params)
        self.learned_optimizer.optimizer(theta).init(params)  # fails early on a mismatched theta
        return LearnedOptimizerHParams(hparams, theta), hstate

    def reset_params(self, rng, hparams, hstate, sample_input):
        return self.module.reset_params(rng, hparams.module, hstate, sample_input)
