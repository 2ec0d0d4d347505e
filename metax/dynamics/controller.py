"""A learning-rate controller driven by the meta-predictor, running inside the compiled step.

Every `interval` steps (from step `warmup` on) the controller asks the predictor what the
loss will be k steps ahead if the rate were `lr * m` for each multiplier `m`, and keeps
the rate whose prediction is lowest. The predictor only ever saw constant-rate runs, so
its answer is "runs in this state that used this rate went on to this loss"; two choices
keep the question inside what it saw:

- the rate stays within `[lr_min, lr_max]`, by default the range of rates the sweep
  trained with for that optimiser (no extrapolation beyond the data);
- the candidate's `update_ratio` is scaled by `m` too: for every optimiser here the update
  is the optimiser's direction times the rate, so at a fixed state it is proportional to it.

Early stopping is `train_runs(..., target_accuracy=...)`: a run stops when its validation
accuracy at an epoch's end reaches the target.
"""

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from metax.dynamics.architectures import Architecture
from metax.dynamics.data import ClassificationData
from metax.dynamics.predictor import Predictor, PredictorConfig, features, predict
from metax.dynamics.training import TrainResult, train_runs


@dataclasses.dataclass(frozen=True)
class LRController:
    """An `LRPolicy` for `train_runs` / `make_epoch_fn`; its `policy_params` is a `Predictor`.

    Attributes:
      config: the predictor's `PredictorConfig`.
      lr_min, lr_max: the bounds the rate never leaves (0 < lr_min <= lr_max).
      multipliers: candidate factors on the current rate at each decision.
      interval: steps between decisions.
      warmup: no decision before this many steps (the moving averages settle first).

    Example:
      >>> from metax.dynamics import LRController, PredictorConfig
      >>> config = PredictorConfig(k=10, target_accuracy=0.9, epochs=5)
      >>> controller = LRController(config, lr_min=0.001, lr_max=0.1, multipliers=(0.5, 1.0, 2.0))
      >>> controller.candidates(jnp.asarray(0.08)).tolist()  # 0.16 is clipped to lr_max
      [0.04, 0.08, 0.1]
      >>> LRController(config, lr_min=0.1, lr_max=0.01)
      Traceback (most recent call last):
        ...
      ValueError: LRController needs 0 < lr_min <= lr_max, got lr_min=0.1, lr_max=0.01.
    """

    config: PredictorConfig
    lr_min: float
    lr_max: float
    multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    interval: int = 10
    warmup: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.lr_min <= self.lr_max:
            raise ValueError(f"LRController needs 0 < lr_min <= lr_max, got lr_min={self.lr_min}, lr_max={self.lr_max}.")
        if not self.multipliers or min(self.multipliers) <= 0:
            raise ValueError(f"multipliers must be positive factors, got {self.multipliers}.")
        if self.interval < 1 or self.warmup < 0:
            raise ValueError(f"interval must be >= 1 and warmup >= 0, got {self.interval}, {self.warmup}.")

    def candidates(self, lr: jax.Array) -> jax.Array:
        return jnp.clip(lr * jnp.asarray(self.multipliers, jnp.float32), self.lr_min, self.lr_max)

    def __call__(self, predictor: Predictor, log: dict, global_step: jax.Array) -> jax.Array:
        lr = log["lr"]
        rates = self.candidates(lr)

        def predicted_log_loss_ratio(rate):
            columns = {**log, "lr": rate, "update_ratio": log["update_ratio"] * rate / lr}
            return predict(self.config, predictor, features(columns))[0]

        scores = jax.vmap(predicted_log_loss_ratio)(rates)
        best = rates[jnp.argmin(jnp.where(jnp.isfinite(scores), scores, jnp.inf))]
        decide = (global_step + 1 >= self.warmup) & ((global_step + 1) % self.interval == 0)
        return jnp.clip(jnp.where(decide, best, lr), self.lr_min, self.lr_max)


def train_with_controller(
    arch: Architecture,
    optimizer: str,
    learning_rate: float,
    seeds: Sequence[int],
    data: ClassificationData,
    controller: LRController,
    predictor: Predictor,
    *,
    epochs: int,
    batch_size: int,
    val_every: int,
    target_accuracy: Optional[Any] = None,
) -> TrainResult:
    """Trains one run per seed from `learning_rate`, the controller setting the rate as it
    goes, stopping a group when every run's validation accuracy reached `target_accuracy`.

    Example:
      The starting rate must lie within the controller's bounds (checked before anything
      compiles; a real call trains for seconds):

      >>> from metax.dynamics import Architecture, ClassificationData, LRController, PredictorConfig, train_with_controller
      >>> x, y = np.zeros((8, 8, 8, 1), np.float32), np.arange(8, dtype=np.int32)
      >>> data = ClassificationData(x, y, x, y, x, y, num_classes=10)
      >>> controller = LRController(PredictorConfig(k=10, target_accuracy=0.9, epochs=2), lr_min=0.01, lr_max=0.1)
      >>> train_with_controller(
      ...     Architecture("mlp", 1, 4, "relu"), "sgd", 0.5, [0, 1], data, controller, predictor=None,
      ...     epochs=2, batch_size=4, val_every=2,
      ... )
      Traceback (most recent call last):
        ...
      ValueError: learning_rate=0.5 lies outside the controller's bounds [0.01, 0.1].
    """
    if not controller.lr_min <= learning_rate <= controller.lr_max:
        raise ValueError(f"learning_rate={learning_rate} lies outside the controller's bounds [{controller.lr_min}, {controller.lr_max}].")
    return train_runs(
        arch,
        optimizer,
        [learning_rate] * len(seeds),
        list(seeds),
        data,
        epochs=epochs,
        batch_size=batch_size,
        val_every=val_every,
        lr_policy=controller,
        policy_params=predictor,
        target_accuracy=target_accuracy,
    )
