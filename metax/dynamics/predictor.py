"""A meta-predictor of training dynamics: from one step's measurements, the loss k steps
ahead, the run's final accuracy and the epoch it reaches a target accuracy.

An MLP (Haiku, trained with optax) on the features of `features` -- the same function
reads a dataset table (numpy columns) and a step's log inside a compiled training step
(the controller), so the two can never disagree. History enters through the moving
averages the step carries (`loss_ema`, `loss_ema_slow`, `acc_ema`, `val_acc_last`) rather
than a sequence model.

Outputs (each standardised with training-set statistics):
  0. `log(loss_{t+k}) - log(loss_ema_t)`: the loss ahead relative to the current level;
  1. the final validation accuracy;
  2. the epoch (1-based) the validation accuracy first reaches the dataset's target,
     `epochs + 1` for runs that never do.

Baselines it is judged against, on held-out runs: the last value (`loss_t`, the current
validation accuracy), the last moving average, and a least-squares line through the last
`k` losses (or the last two epoch-end accuracies) extrapolated ahead.
"""

import dataclasses
from typing import Mapping, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pyarrow as pa

from metax.dynamics.architectures import ACTIVATION_NAMES, KINDS, OPTIMIZER_NAMES
from metax.dynamics.dataset import dataset_settings

_EPS = 1e-12

FEATURE_NAMES = (
    "log_loss",
    "log_loss_ema",
    "ema_trend",  # log loss_ema - log loss_ema_slow: < 0 while the loss falls
    "log_grad_norm",
    "log_weight_norm",
    "log_update_ratio",
    "log_lr",
    "acc_ema",
    "val_acc_last",
    "progress",
    "depth",
    "log_width",
    *(f"kind_{name}" for name in KINDS),
    *(f"activation_{name}" for name in ACTIVATION_NAMES),
    *(f"optimizer_{name}" for name in OPTIMIZER_NAMES),
)
# The columns (dataset) or log entries (training step) the features are computed from.
FEATURE_INPUTS = (
    "loss", "loss_ema", "loss_ema_slow", "grad_norm", "weight_norm", "update_ratio", "lr",
    "acc_ema", "val_acc_last", "progress", "depth", "width", "kind", "activation", "optimizer",
)
OUTPUTS = ("log_loss_ratio", "final_val_acc", "epochs_to_target")


def features(columns: Mapping[str, jax.typing.ArrayLike]) -> jax.Array:
    """Feature matrix `(..., len(FEATURE_NAMES))` from `FEATURE_INPUTS` of any common shape.

    Example:
      >>> from metax.dynamics import FEATURE_NAMES, features
      >>> from metax.dynamics.predictor import FEATURE_INPUTS
      >>> step = {name: 1.0 for name in FEATURE_INPUTS}
      >>> step.update(kind=0, activation=1, optimizer=2, width=16.0)  # mlp, tanh, adam
      >>> feats = features(step)
      >>> feats.shape == (len(FEATURE_NAMES),)
      True
      >>> named = dict(zip(FEATURE_NAMES, feats.tolist()))
      >>> named["log_loss"], round(named["log_width"], 4), named["activation_tanh"], named["optimizer_adam"]
      (0.0, 2.7726, 1.0, 1.0)
      >>> features({name: np.ones(5) for name in FEATURE_INPUTS}).shape  # a column per input: a row per step
      (5, 22)
    """
    c = {name: jnp.asarray(columns[name], jnp.float32) for name in FEATURE_INPUTS}
    log = lambda x: jnp.log(x + _EPS)
    one_hot = lambda codes, n: jax.nn.one_hot(jnp.asarray(columns[codes]).astype(jnp.int32), n)
    dense = jnp.stack(
        [
            log(c["loss"]),
            log(c["loss_ema"]),
            log(c["loss_ema"]) - log(c["loss_ema_slow"]),
            log(c["grad_norm"]),
            log(c["weight_norm"]),
            log(c["update_ratio"]),
            log(c["lr"]),
            c["acc_ema"],
            c["val_acc_last"],
            c["progress"],
            c["depth"],
            log(c["width"]),
        ],
        axis=-1,
    )
    return jnp.concatenate(
        [dense, one_hot("kind", len(KINDS)), one_hot("activation", len(ACTIVATION_NAMES)), one_hot("optimizer", len(OPTIMIZER_NAMES))],
        axis=-1,
    )


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    """The predictor's shape and the dataset settings it was trained for.

    Example:
      >>> from metax.dynamics import PredictorConfig
      >>> config = PredictorConfig(k=10, target_accuracy=0.9, epochs=5)
      >>> config.hidden
      (64, 64)
    """

    k: int
    target_accuracy: float
    epochs: int
    hidden: tuple[int, ...] = (64, 64)


class Predictor(NamedTuple):
    """Trained weights and the standardisation of inputs and outputs (a pytree).

    Example:
      >>> from metax.dynamics import Predictor, PredictorConfig
      >>> predictor = Predictor.zeros(PredictorConfig(k=10, target_accuracy=0.9, epochs=5, hidden=(8,)))
      >>> [leaf.shape for leaf in jax.tree_util.tree_leaves(predictor)]  # 22 features, one hidden layer, 3 outputs
      [(8,), (22, 8), (3,), (8, 3), (22,), (22,), (3,), (3,)]
    """

    params: hk.Params
    x_mean: jax.Array  # (F,)
    x_std: jax.Array  # (F,)
    y_mean: jax.Array  # (3,)
    y_std: jax.Array  # (3,)

    @classmethod
    def zeros(cls, config: "PredictorConfig", y_mean: float = 0.0) -> "Predictor":
        """All-zero weights under identity standardisation: it predicts `y_mean` for every
        input (an untrained predictor, for examples; `fit_predictor` trains real ones)."""
        num_features = len(FEATURE_NAMES)
        shapes = jax.eval_shape(_network(config).init, jax.random.PRNGKey(0), jnp.zeros((1, num_features)))
        return cls(jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes),
                   jnp.zeros(num_features), jnp.ones(num_features), jnp.full(len(OUTPUTS), y_mean), jnp.ones(len(OUTPUTS)))


def _network(config: PredictorConfig) -> hk.Transformed:
    return hk.without_apply_rng(
        hk.transform(lambda x: hk.nets.MLP((*config.hidden, len(OUTPUTS)), activation=jax.nn.gelu)(x))
    )


def predict(config: PredictorConfig, predictor: Predictor, feats: jax.Array) -> jax.Array:
    """Raw outputs `(..., 3)` in the units of `OUTPUTS` (jit- and vmap-able).

    Example:
      >>> from metax.dynamics import FEATURE_NAMES, Predictor, PredictorConfig, predict
      >>> config = PredictorConfig(k=10, target_accuracy=0.9, epochs=5, hidden=(8,))
      >>> predictor = Predictor.zeros(config, y_mean=2.0)  # untrained: fit_predictor trains one
      >>> num_features = len(FEATURE_NAMES)
      >>> predict(config, predictor, jnp.zeros((2, num_features))).tolist()  # 2 steps' features; zero net: y_mean
      [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """
    x = (feats - predictor.x_mean) / predictor.x_std
    return _network(config).apply(predictor.params, x) * predictor.y_std + predictor.y_mean


def loss_ahead_from_output(loss_ema, log_loss_ratio):
    """The predicted loss k steps ahead from output 0 (clipped so a wild prediction stays finite)."""
    return loss_ema * np.exp(np.clip(log_loss_ratio, -20.0, 20.0))


def table_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """The numeric columns of a dataset table as numpy arrays (NaN kept)."""
    return {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in table.column_names
        if not pa.types.is_list(table.schema.field(name).type) and not pa.types.is_string(table.schema.field(name).type)
    }


def targets(columns: Mapping[str, np.ndarray], epochs: int) -> np.ndarray:
    """The three training targets `(rows, 3)`; NaN where a target is unknown."""
    ratio = np.log(columns["loss_ahead"] + _EPS) - np.log(columns["loss_ema"] + _EPS)
    reached = np.where(np.isnan(columns["epochs_to_target"]), epochs + 1, columns["epochs_to_target"])
    return np.stack([ratio, columns["final_val_acc"], reached], axis=-1).astype(np.float32)


def fit_predictor(
    table: pa.Table,
    *,
    epochs: int,
    hidden: tuple[int, ...] = (64, 64),
    steps: int = 3000,
    batch_size: int = 512,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> tuple[PredictorConfig, Predictor]:
    """Trains the predictor on the rows of `table` (use the training split).

    Args:
      table: dataset rows (`build_dataset`); `k` and the target accuracy come from its schema.
      epochs: the epochs of the sweep's runs (the value of a never-reached target is epochs + 1).
      steps, batch_size, learning_rate: Adam with cosine decay on mini-batches of rows,
        the whole loop one `lax.scan`.

    Example:
      >>> from metax.dynamics import build_dataset, split_tables
      >>> from metax.dynamics.dataset import example_run  # a made-up run: a loss falling on a line
      >>> table = build_dataset([example_run(width) for width in (4, 8, 16)], k=2, target_accuracy=0.9, val_fraction=0.34)
      >>> train, val = split_tables(table)
      >>> from metax.dynamics import fit_predictor
      >>> config, predictor = fit_predictor(train, epochs=2, hidden=(4,), steps=3)  # a real fit uses thousands
      >>> config
      PredictorConfig(k=2, target_accuracy=0.9, epochs=2, hidden=(4,))
      >>> predictor.x_mean.shape, predictor.y_mean.shape
      ((22,), (3,))
    """
    settings = dataset_settings(table)
    config = PredictorConfig(settings["k"], settings["target_accuracy"], int(epochs), tuple(hidden))
    columns = table_columns(table)
    x = np.asarray(features(columns))
    y = targets(columns, epochs)
    keep = np.all(np.isfinite(x), axis=1)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        raise ValueError(f"fit_predictor needs at least two rows with finite features, got {len(x)}.")
    mask = np.isfinite(y)
    x_mean, x_std = x.mean(0), x.std(0) + 1e-6
    y_mean = np.array([np.mean(y[mask[:, j], j]) for j in range(y.shape[1])], np.float32)
    y_std = np.array([np.std(y[mask[:, j], j]) + 1e-6 for j in range(y.shape[1])], np.float32)
    xs = jnp.asarray((x - x_mean) / x_std)
    ys = jnp.asarray(np.where(mask, (y - y_mean) / y_std, 0.0))
    ms = jnp.asarray(mask, jnp.float32)
    net = _network(config)
    params = net.init(jax.random.PRNGKey(seed), xs[:1])
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

    def loss_fn(params, index):
        error = (net.apply(params, xs[index]) - ys[index]) * ms[index]
        return jnp.sum(jnp.square(error)) / jnp.maximum(jnp.sum(ms[index]), 1.0)

    def step(carry, key):
        params, opt_state = carry
        index = jax.random.randint(key, (min(batch_size, xs.shape[0]),), 0, xs.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, index)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    train = jax.jit(lambda params, keys: jax.lax.scan(step, (params, optimizer.init(params)), keys))
    (params, _), _ = train(params, jax.random.split(jax.random.PRNGKey(seed + 1), steps))
    predictor = Predictor(params, *(jnp.asarray(a, jnp.float32) for a in (x_mean, x_std, y_mean, y_std)))
    return config, predictor


def _runs(table: pa.Table):
    run_ids = np.asarray(table.column("run_id").to_pylist())
    columns = table_columns(table)
    for run_id in np.unique(run_ids):
        rows = np.flatnonzero(run_ids == run_id)
        rows = rows[np.argsort(columns["step"][rows])]
        yield rows, columns


def linear_extrapolation(series: np.ndarray, ahead: int, window: int) -> np.ndarray:
    """At every t >= window - 1: the least-squares line through series[t-window+1 .. t],
    evaluated `ahead` steps after t; NaN before that.

    Example:
      >>> from metax.dynamics import linear_extrapolation
      >>> linear_extrapolation(np.array([5.0, 4.0, 3.0, 2.0]), ahead=2, window=2).tolist()
      [nan, 2.0, 1.0, 0.0]
    """
    series = np.asarray(series, np.float64)
    out = np.full(series.shape, np.nan)
    if window < 2 or len(series) < window:
        return out
    steps = np.arange(window) - (window - 1)  # the last point at 0
    centred = steps - steps.mean()
    for t in range(window - 1, len(series)):
        values = series[t - window + 1 : t + 1]
        slope = np.dot(centred, values - values.mean()) / np.dot(centred, centred)
        out[t] = values.mean() + slope * (ahead - steps.mean())
    return out


def _errors(prediction: np.ndarray, actual: np.ndarray) -> dict:
    error = prediction - actual
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(np.square(error)))), "rows": int(len(error))}


def evaluate_predictor(config: PredictorConfig, predictor: Predictor, table: pa.Table) -> dict:
    """Errors of the predictor and the naive baselines on `table` (use held-out runs).

    - `loss_ahead`: every row with a known loss k steps ahead and k steps of history:
      the predictor, the last value `loss_t`, the last moving average `loss_ema_t`, and a
      line through the last k losses extrapolated k steps.
    - `final_val_acc`: rows at the end of each epoch but the last: the predictor, the last
      value (the current validation accuracy), and a line through the last two epoch-end
      accuracies extrapolated to the final epoch (clipped to [0, 1]).
    - `epochs_to_target`: the same rows of runs that reach the target, before they reach it:
      the predictor against the same line, extrapolated to where it meets the target.

    Example:
      >>> from metax.dynamics import build_dataset, split_tables
      >>> from metax.dynamics.dataset import example_run  # a made-up run: a loss falling on a line
      >>> table = build_dataset([example_run(width) for width in (4, 8, 16)], k=2, target_accuracy=0.9, val_fraction=0.34)
      >>> train, val = split_tables(table)
      >>> from metax.dynamics import Predictor, PredictorConfig, evaluate_predictor
      >>> config = PredictorConfig(k=2, target_accuracy=0.9, epochs=2, hidden=(4,))  # as fit_predictor(train, ...) returns
      >>> predictor = Predictor.zeros(config)  # untrained
      >>> report = evaluate_predictor(config, predictor, val)
      >>> report["k"], report["runs"], sorted(report["loss_ahead"])
      (2, 1, ['last_ema', 'last_value', 'linear_extrapolation', 'predictor'])
      >>> report["loss_ahead"]["linear_extrapolation"]  # the loss falls on a line: the line is exact
      {'mae': 0.0, 'rmse': 0.0, 'rows': 3}
    """
    k = config.k
    loss_rows = {"predictor": [], "last_value": [], "last_ema": [], "linear_extrapolation": [], "actual": []}
    acc_rows = {"predictor": [], "last_value": [], "linear_extrapolation": [], "actual": []}
    ett_rows = {"predictor": [], "linear_extrapolation": [], "actual": []}
    apply = jax.jit(lambda feats: predict(config, predictor, feats))
    for rows, columns in _runs(table):
        run = {name: values[rows] for name, values in columns.items()}
        out = np.asarray(apply(features(run)))
        loss = run["loss"].astype(np.float64)
        linear = linear_extrapolation(loss, k, k)
        valid = np.isfinite(run["loss_ahead"]) & np.isfinite(linear)
        loss_rows["predictor"].append(loss_ahead_from_output(run["loss_ema"], out[:, 0])[valid])
        loss_rows["last_value"].append(loss[valid])
        loss_rows["last_ema"].append(run["loss_ema"][valid])
        loss_rows["linear_extrapolation"].append(linear[valid])
        loss_rows["actual"].append(run["loss_ahead"][valid])

        epoch_end = np.flatnonzero(np.isfinite(run["val_acc"]) & (np.diff(run["epoch"], append=-1) != 0))
        final_epoch = config.epochs
        ends = epoch_end[:-1]  # the last epoch's end already knows the final accuracy
        accs = run["val_acc"][epoch_end]
        for position, row in enumerate(ends):
            done = position + 1  # epochs completed at this row
            prev = accs[position - 1] if position > 0 else np.nan
            slope = accs[position] - prev
            line = np.clip(accs[position] + slope * (final_epoch - done), 0.0, 1.0) if position > 0 else accs[position]
            acc_rows["predictor"].append(out[row, 1])
            acc_rows["last_value"].append(accs[position])
            acc_rows["linear_extrapolation"].append(line)
            acc_rows["actual"].append(run["final_val_acc"][row])
            reached = run["epochs_to_target"][row]
            if np.isfinite(reached) and done < reached:
                gap = config.target_accuracy - accs[position]
                guess = done + gap / slope if position > 0 and slope > 0 else final_epoch + 1
                ett_rows["predictor"].append(out[row, 2])
                ett_rows["linear_extrapolation"].append(np.clip(guess, done + 1, final_epoch + 1))
                ett_rows["actual"].append(reached)

    def report(rows):
        flat = {name: np.concatenate([np.atleast_1d(np.asarray(v, np.float64)) for v in values]) if values else np.zeros(0) for name, values in rows.items()}
        if not len(flat["actual"]):
            return {}
        return {name: _errors(flat[name], flat["actual"]) for name in rows if name != "actual"}

    return {
        "k": k,
        "runs": len({*table.column("run_id").to_pylist()}),
        "loss_ahead": report(loss_rows),
        "final_val_acc": report(acc_rows),
        "epochs_to_target": report(ett_rows),
    }
