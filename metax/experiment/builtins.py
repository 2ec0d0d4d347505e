"""metax's own registrations: the names configs and `metax list` know out of the box.

Learners, modules and learned optimisers are registered as the library's classes, so
their config keys are exactly their constructor arguments; tasks and models get small
builders that return what the runner needs (`TaskSpec`, `ModelFactory`).
"""

from collections.abc import Callable
from typing import Literal, Optional

import haiku as hk
import jax
import optax

import metax.data
import metax.kernel
import metax.learner
import metax.models
import metax.module
from metax.experiment.components import ModelFactory, TaskSpec
from metax.experiment.registry import register
from metax.experiment.constraints import PositiveInt

# -- tasks -----------------------------------------------------------------------------


def _regression(family: str, shots_train: int, shots_test: int, **extra) -> TaskSpec:
    sampler = metax.data.make_task_sampler(family, shots_train, shots_test)
    return TaskSpec(sampler, "squared_error", None, **extra)


@register("task", "sinusoid")
def sinusoid(split: str, shots_train: PositiveInt = 10, shots_test: PositiveInt = 10) -> TaskSpec:
    """Sinusoid regression y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi] (MAML's benchmark)."""
    del split  # every split draws fresh tasks from the same distribution
    return _regression("sinusoid", shots_train, shots_test)


@register("task", "linear")
def linear(split: str, shots_train: PositiveInt = 50, shots_test: PositiveInt = 50) -> TaskSpec:
    """Lines y = a x + b with a, b ~ U[-5, 5] (Reptile's Koi demo)."""
    del split
    return _regression("linear", shots_train, shots_test)


@register("task", "family")
def family(split: str, shots_train: PositiveInt = 10, shots_test: PositiveInt = 10) -> TaskSpec:
    """Five 1-D function families (harmonics, lines, quadratics, sawtooths, small sines); scores per family."""
    del split
    return _regression("family", shots_train, shots_test, groups=("family", tuple(metax.data.FAMILY_NAMES)))


_FEWSHOT_SOURCES: dict = {}


def _labelled_source(source: str, path: Optional[str], image_size: Optional[int]):
    """`(x, y)` of a labelled source, read once per process."""
    key = (source, path, image_size)
    if key not in _FEWSHOT_SOURCES:
        if source != "digits" and path is None:
            raise ValueError(f"task fewshot with source={source!r} needs path= (the file or folder to read).")
        if source == "digits":
            _FEWSHOT_SOURCES[key] = metax.data.load_digits()
        elif source == "mnist":
            _FEWSHOT_SOURCES[key] = metax.data.load_mnist(path, "all")
        elif source == "npz":
            _FEWSHOT_SOURCES[key] = metax.data.load_labelled_npz(path)
        else:  # the folder reader also returns the class names, which the task does not use
            x, y, _ = metax.data.load_image_folder(path, size=image_size)
            _FEWSHOT_SOURCES[key] = (x, y)
    return _FEWSHOT_SOURCES[key]


@register("task", "fewshot")
def fewshot(
    split: str,
    ways: PositiveInt = 5,
    shots: PositiveInt = 5,
    queries: PositiveInt = 15,
    source: Literal["digits", "mnist", "npz", "folder"] = "digits",
    path: Optional[str] = None,
    image_size: Optional[PositiveInt] = None,
    rotations: bool = True,
    train_classes: Optional[list[int]] = None,
    test_classes: Optional[list[int]] = None,
    fractions: list[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> TaskSpec:
    """N-way K-shot classification on held-out classes: digits (ships offline), MNIST IDX, .npz, image folders."""
    x, y = _labelled_source(source, path, image_size)
    classes = None
    if train_classes is not None or test_classes is not None:
        if train_classes is None or test_classes is None:
            raise ValueError("give both train_classes and test_classes (or neither, to split by fractions).")
        classes = {"train": list(train_classes), "test": list(test_classes)}
    splits = metax.data.FewShotSplits(x, y, fractions=tuple(fractions), classes=classes, seed=seed, rotations=rotations)
    # Meta-training draws the train classes; held-out evaluation the test classes.
    sampler = splits.sampler("train" if split == "train" else "test", ways=ways, shots=shots, queries=queries)
    return TaskSpec(sampler, "cross_entropy", ways)


_OMNIGLOT: dict = {}


@register("task", "omniglot")
def omniglot(
    split: str,
    path: list[str],
    ways: PositiveInt = 5,
    shots: PositiveInt = 1,
    queries: PositiveInt = 15,
    image_size: PositiveInt = 28,
    test_alphabets: Optional[list[str]] = None,
    valid_alphabets: list[str] = (),
    held_out: Literal["valid", "test"] = "valid",
    rotations: Literal["train", "all", "none"] = "train",
) -> TaskSpec:
    """N-way K-shot Omniglot characters (zips or folders), split by alphabet; held-out tasks from valid or test alphabets."""
    key = (tuple(path), image_size)
    if key not in _OMNIGLOT:
        try:
            _OMNIGLOT[key] = metax.data.load_omniglot(list(path), size=image_size)
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"path: {error}") from None
    data = _OMNIGLOT[key]
    classes = metax.data.alphabet_classes(data, test=test_alphabets, valid=list(valid_alphabets))
    part = "train" if split == "train" else held_out
    if not classes[part]:
        raise ValueError(
            f"held_out={held_out!r} but no alphabet is in that split; name some in {held_out}_alphabets "
            "or score the other split."
        )
    turned = rotations == "all" or (rotations == "train" and part == "train")
    splits = metax.data.FewShotSplits(data.x, data.y, classes=classes, rotations=turned)
    return TaskSpec(splits.sampler(part, ways=ways, shots=shots, queries=queries), "cross_entropy", ways)


# -- models ------------------------------------------------------------------------------


@register("model", "mlp")
def mlp(
    hidden_dims: list[PositiveInt] = (40, 40),
    activation: Callable = jax.nn.relu,
    batch_norm: bool = False,
    with_bias: bool = True,
) -> ModelFactory:
    """Multilayer perceptron; a body without readout for ANIL / GainMod, with gain/shift hooks."""
    hidden = tuple(hidden_dims)

    def build(output_dim: Optional[int]) -> hk.TransformedWithState:
        sizes = hidden if output_dim is None else hidden + (output_dim,)
        if not sizes:
            raise ValueError("model mlp with hidden_dims=[] has no layer to use as a body; give it hidden layers.")

        def forward(x, is_training, gain=None, shift=None):
            network = metax.models.MultilayerPerceptron(
                sizes, activation=activation, activate_final=output_dim is None, batch_norm=batch_norm,
                with_bias=with_bias,
            )
            return network(x, is_training, gain=gain, shift=shift)

        return hk.transform_with_state(forward)

    return ModelFactory(build, hidden)


@register("model", "linear")
def linear_model(with_bias: bool = True) -> ModelFactory:
    """One linear layer (Koi's Reptile demo); it has no body, so only full-network modules use it."""

    def build(output_dim: Optional[int]) -> hk.TransformedWithState:
        if output_dim is None:
            raise ValueError(
                "model linear has no hidden layer to serve as a body; modules that adapt a head "
                "(anil, gainmod) need model mlp or conv4."
            )
        return hk.transform_with_state(lambda x, is_training: hk.Linear(output_dim, with_bias=with_bias)(hk.Flatten()(x)))

    return ModelFactory(build, ())


@register("model", "conv4")
def conv4(
    channels: PositiveInt = 32,
    max_pool: bool = True,
    decay: float = 0.9,
    batch_norm_policy: Literal["running", "support", "per_step", "transductive"] = "running",
    batch_norm_steps: Optional[PositiveInt] = None,
    conv_impl: Literal["auto", "xla", "shifted"] = "auto",
) -> ModelFactory:
    """The 4-block convolutional network of few-shot image classification (images (H, W, C)).

    Batch norm follows `batch_norm_policy` (see `metax.models.norm`). `conv_impl` chooses
    how its convolutions are computed (`metax.models.conv2d`): "auto" is matrix products
    over shifted views on CPU (XLA's convolution gradients are slow there) and XLA's
    convolution elsewhere; the values are the same up to float rounding.
    """
    metax.models.norm.check_batch_norm_policy(batch_norm_policy, batch_norm_steps)

    def build(output_dim: Optional[int]) -> hk.TransformedWithState:
        def forward(x, is_training, gain=None, shift=None):
            network = metax.models.Conv4(
                channels, decay, readout=output_dim, max_pool=max_pool,
                batch_norm_policy=batch_norm_policy, batch_norm_steps=batch_norm_steps,
                conv_impl=conv_impl,
            )
            return network(x, is_training, gain=gain, shift=shift)

        return hk.transform_with_state(forward)

    return ModelFactory(build, (channels,) * 4)


# -- modules -----------------------------------------------------------------------------

register("module", "learned_init", metax.module.LearnedInit, description="Meta-learned initialisation of every weight (MAML; iMAML with reg_strength).")
register("module", "anil", metax.module.AlmostNoInnerLoop, description="ANIL: meta-learned body, linear head adapted per task.")
register("module", "cavia", metax.module.CAVIA, description="CAVIA: meta-learned network, per-task context vector adapted.")
register(
    "module", "gainmod", metax.module.GainMod,
    description="Gain modulation: per-unit gains and shifts (and the readout) adapted per task.",
    defaults={"adapt_head": True, "reg_strength": None},
)
register(
    "module", "complex_synapse", metax.module.ComplexSynapse,
    description="Complex synapse: every weight adapted, pulled toward learned rest values by learned strengths.",
    defaults={"l2_reg": 1.0, "l2_fixed": False},
)

# -- learners ----------------------------------------------------------------------------

register(
    "learner", "maml", metax.learner.ModelAgnosticMetaLearning,
    description="MAML: backprop through the inner loop (first_order: FOMAML).",
)
register(
    "learner", "reptile", metax.learner.Reptile,
    description="Reptile: move the initialisation toward the adapted weights.",
)
register(
    "learner", "buffered_reptile", metax.learner.BufferedReptile,
    description="Reptile; non-initialisation hparams get partial gradients summed along the loop.",
)
register(
    "learner", "eqprop", metax.learner.EquilibriumPropagation,
    description="Equilibrium propagation: contrast of a free and a beta-nudged end point.",
)
register(
    "learner", "symmetric_eqprop", metax.learner.SymmetricEquilibriumPropagation,
    description="Equilibrium propagation nudged by +beta and -beta (O(beta^2) bias).",
)
register(
    "learner", "cg", metax.learner.ConjugateGradient,
    description="Implicit gradient at the inner end point, H^-1 by conjugate gradient (iMAML).",
)
register(
    "learner", "rbp", metax.learner.RecurrentBackpropagation,
    description="Implicit gradient with H^-1 from a truncated Neumann series (recurrent backprop).",
)
register(
    "learner", "t1t2", metax.learner.T1T2,
    description="Implicit gradient with H^-1 replaced by the identity (T1-T2).",
)
register(
    "learner", "evosax", metax.learner.Evosax,
    description="An evosax evolution strategy over the hparams (no gradient).",
)
register(
    "learner", "learned_kernel", metax.learner.LearnedKernel,
    description="Meta-trains a learned update rule by backprop (truncation, remat) or PES / noise-reuse ES.",
    components={"kernel": ("kernels",)},
)

# -- optimisers: optax by name ------------------------------------------------------------

OPTAX_NAMES = (
    "sgd", "adam", "adamw", "adabelief", "adagrad", "adamax", "lamb", "lars", "lion", "nadam",
    "noisy_sgd", "novograd", "radam", "rmsprop", "sign_sgd", "yogi", "adafactor", "fromage",
)
for _name in OPTAX_NAMES:
    if hasattr(optax, _name):
        _doc = (getattr(optax, _name).__doc__ or "").strip().splitlines()
        register("optimizer", _name, getattr(optax, _name), description=f"optax.{_name}: " + (_doc[0] if _doc else ""))


def chain(transforms: list) -> optax.GradientTransformation:
    """Applies optimisers and transformations in order, e.g. clipping then SGD (optax.chain)."""
    if not transforms:
        raise ValueError("chain needs at least one transform, e.g. [{name: clip_by_global_norm, max_norm: 1.0}, {name: sgd, ...}].")
    return optax.chain(*transforms)


register("optimizer", "chain", chain, components={"transforms": ("optimizers",)})
register("optimizer", "clip_by_global_norm", optax.clip_by_global_norm,
         description="optax.clip_by_global_norm: rescale updates whose global norm exceeds max_norm (use inside chain).")
register("optimizer", "clip", optax.clip, description="optax.clip: clip every update entry to [-max_delta, max_delta] (use inside chain).")

# -- learned inner optimisers --------------------------------------------------------------

register("kernel", "meta_sgd", metax.kernel.MetaSGD, description="Meta-SGD: a learned rate per parameter entry.")
register("kernel", "layer_step_lr", metax.kernel.LayerStepLR, description="MAML++ LSLR: a learned rate per tensor and inner step.")
register("kernel", "scalar_lr", metax.kernel.ScalarLR, description="One learned learning rate.")
register("kernel", "coordinatewise", metax.kernel.CoordinatewiseKernel, description="A coordinate-wise learned update rule (shared MLP over gradient features).")
register("kernel", "metadynamic", metax.kernel.MetadynamicOptimizer, description="Torch-MetaDyn's learned kernel delta = f(z, grad) over the raveled params.")

del _name, _doc
