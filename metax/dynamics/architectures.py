"""The small classifiers a sweep trains, their optimisers, and the numeric codes logged for both.

An architecture is `(kind, depth, width, activation)`: an MLP with `depth` hidden layers of
`width` units, or a conv net with `depth` 3x3 convolutions of `width` channels (2x2
max-pooling after each while the image is at least 4 pixels high), both ending in a linear
readout. Runs whose architectures are equal have parameter pytrees of the same shapes and
train together under `jax.vmap`.
"""

import dataclasses
from typing import Callable

import haiku as hk
import jax
import optax

from metax.models.activations import ACTIVATIONS as SHARED_ACTIVATIONS
from metax.models.mlp import MultilayerPerceptron

# Codes are logged per step and stored in the dataset: append, never reorder.
KINDS = ("mlp", "conv")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    name: SHARED_ACTIVATIONS[name] for name in ("relu", "tanh", "gelu", "elu")  # the coded subset, in code order
}
# Each takes the learning rate as its first argument so `optax.inject_hyperparams` can move it.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": lambda learning_rate: optax.sgd(learning_rate),
    "momentum": lambda learning_rate: optax.sgd(learning_rate, momentum=0.9),
    "adam": lambda learning_rate: optax.adam(learning_rate),
    "rmsprop": lambda learning_rate: optax.rmsprop(learning_rate),
}
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
ACTIVATION_NAMES = tuple(ACTIVATIONS)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One classifier shape. `depth` counts hidden (MLP) or convolutional (conv) layers.

    Example:
      >>> from metax.dynamics import Architecture
      >>> arch = Architecture("mlp", depth=2, width=32, activation="relu")
      >>> arch.name
      'mlp-d2-w32-relu'
      >>> Architecture.from_name("mlp-d2-w32-relu") == arch
      True
      >>> arch.encoding()
      {'depth': 2, 'width': 32, 'activation': 0, 'kind': 0}
    """

    kind: str
    depth: int
    width: int
    activation: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"architecture kind must be one of {KINDS}, got {self.kind!r}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATION_NAMES}, got {self.activation!r}.")
        for name in ("depth", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"architecture {name} must be a positive int, got {value!r}.")

    @property
    def name(self) -> str:
        return f"{self.kind}-d{self.depth}-w{self.width}-{self.activation}"

    @classmethod
    def from_name(cls, name: str) -> "Architecture":
        """The inverse of `name`: "mlp-d2-w32-relu" -> Architecture("mlp", 2, 32, "relu")."""
        parts = name.split("-")
        if len(parts) != 4 or parts[1][:1] != "d" or parts[2][:1] != "w" or not (parts[1][1:].isdigit() and parts[2][1:].isdigit()):
            raise ValueError(f"architecture name must look like 'mlp-d2-w32-relu' (kind-d<depth>-w<width>-activation), got {name!r}.")
        return cls(parts[0], int(parts[1][1:]), int(parts[2][1:]), parts[3])

    def encoding(self) -> dict[str, int]:
        """Numeric codes logged with every step: depth, width, activation id, kind id."""
        return {
            "depth": self.depth,
            "width": self.width,
            "activation": ACTIVATION_NAMES.index(self.activation),
            "kind": KINDS.index(self.kind),
        }


class SmallConvNet(hk.Module):
    """`depth` x (3x3 conv -> activation -> 2x2 max-pool while height >= 4), then a linear readout.

    Example:
      >>> from metax.dynamics import SmallConvNet
      >>> net = hk.without_apply_rng(hk.transform(lambda x: SmallConvNet(2, 4, jax.nn.relu, num_classes=10)(x)))
      >>> images = jnp.zeros((3, 8, 8, 1))
      >>> params = jax.eval_shape(net.init, jax.random.PRNGKey(0), images)  # shapes only, nothing runs
      >>> sorted(params)
      ['small_conv_net/conv_0', 'small_conv_net/conv_1', 'small_conv_net/readout']
      >>> params["small_conv_net/readout"]["w"].shape  # 8x8 pooled twice: 2x2 pixels x 4 channels
      (16, 10)
      >>> jax.eval_shape(net.apply, params, images).shape
      (3, 10)
    """

    def __init__(self, depth: int, width: int, activation: Callable, num_classes: int, name=None) -> None:
        super().__init__(name=name)
        self.depth, self.width, self.activation, self.num_classes = depth, width, activation, num_classes

    def __call__(self, images: jax.Array) -> jax.Array:
        out = images
        for i in range(self.depth):
            out = self.activation(hk.Conv2D(self.width, kernel_shape=3, name=f"conv_{i}")(out))
            if out.shape[1] >= 4:
                out = hk.max_pool(out, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="SAME")
        return hk.Linear(self.num_classes, name="readout")(out.reshape(out.shape[0], -1))


def build_network(arch: Architecture, num_classes: int) -> hk.Transformed:
    """`hk.transform` of the classifier; `apply(params, None, images)` with images `(batch, H, W, C)`.

    Example:
      >>> from metax.dynamics import Architecture, build_network
      >>> net = build_network(Architecture("mlp", 1, 8, "tanh"), num_classes=10)
      >>> images = jnp.zeros((5, 8, 8, 1))
      >>> params = jax.eval_shape(net.init, jax.random.PRNGKey(0), images)
      >>> [layer["w"].shape for layer in params.values()]  # the 8x8 image flattened, 8 hidden units, 10 classes
      [(64, 8), (8, 10)]
      >>> jax.eval_shape(net.apply, params, images).shape
      (5, 10)
    """
    activation = ACTIVATIONS[arch.activation]

    def forward(images: jax.Array) -> jax.Array:
        if arch.kind == "mlp":
            sizes = (arch.width,) * arch.depth + (num_classes,)
            return MultilayerPerceptron(sizes, activation=activation)(images, is_training=True)
        return SmallConvNet(arch.depth, arch.width, activation, num_classes)(images)

    return hk.without_apply_rng(hk.transform(forward))


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """The optimiser `name` with its learning rate held in `state.hyperparams["learning_rate"]`,
    so a controller (or `vmap` over rates) can set it without rebuilding the optimiser.

    Example:
      >>> from metax.dynamics import make_optimizer
      >>> state = make_optimizer("momentum", 0.05).init({"w": jnp.zeros(3)})
      >>> float(state.hyperparams["learning_rate"])
      0.05
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZER_NAMES}, got {name!r}.")
    return optax.inject_hyperparams(OPTIMIZERS[name])(learning_rate=learning_rate)
