"""Seed 002: learn the dynamics of many training runs, then use them to train new ones faster.

    python experiments/dynamics/run.py --out runs/dynamics

1. Sweep: the runs of `sweep.yaml` (16 architectures x 6 optimiser/rate pairs on the 8x8
   digits), dynamics logged per step; an existing sweep folder is resumed, never redone.
2. Dataset: one Parquet row per step (`dataset.parquet`), split into train and validation
   by architecture (so by run).
3. Predictor: an MLP predicting the loss k steps ahead, the final accuracy and the epoch
   a target accuracy is reached; its errors on the validation runs against the last value,
   the last moving average and linear extrapolation.
4. Controller study, on architectures that are not in the sweep, 3 seeds each: the
   epochs a run needs to reach the validation accuracy that the 10-epoch baseline (Adam,
   rate 1e-3) reaches, for the baseline itself, for the controller (starting at the same
   rate, adjusting it within the sweep's Adam range, stopping at the target) and, for
   reference, for the best constant rate of the sweep's grid (chosen with hindsight on
   these very runs). Test accuracy at the stopping epoch is reported beside.

Writes metrics.json, dataset.parquet and three plots to --out.
"""

import dataclasses
import os
import sys
import time

import numpy as np

import metax.dynamics as dyn
from metax.experiment import refuse_overwrite, write_json_atomic
from metax.experiment.args import comma_list, non_negative_int, positive_float, positive_int, study_parser
from metax.experiment.plots import pyplot, save_figure
from metax.experiment.signals import run_study

HERE = os.path.dirname(os.path.abspath(__file__))
HELD_OUT = "mlp-d2-w32-relu,mlp-d3-w48-tanh,mlp-d1-w24-relu,conv-d1-w12-relu,conv-d2-w12-relu"


def parse_args(argv):
    parser = study_parser(__doc__.splitlines()[0], "runs/dynamics", seed=None)
    parser.add_argument("--spec", default=os.path.join(HERE, "sweep.yaml"), help="the sweep spec (YAML)")
    parser.add_argument("--sweep-dir", default=None, help="sweep folder (default OUT/sweep); resumed if it exists")
    parser.add_argument("--k", type=positive_int, default=20, help="steps ahead the predictor forecasts the loss")
    parser.add_argument("--target-accuracy", type=float, default=0.9, help="the dataset's epochs-to-target threshold")
    parser.add_argument("--predictor-steps", type=positive_int, default=4000)
    parser.add_argument("--held-out", type=comma_list(dyn.Architecture.from_name), default=HELD_OUT,
                        help="comma list of architecture names (kind-dD-wW-activation)")
    parser.add_argument("--seeds", type=comma_list(non_negative_int), default="100,101,102", help="seeds of the controller study")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--base-lr", type=positive_float, default=1e-3, help="the baseline's constant rate, the controller's start")
    parser.add_argument("--epochs", type=positive_int, default=10, help="the baseline's epochs (and the controller's budget)")
    parser.add_argument("--interval", type=positive_int, default=10, help="steps between controller decisions")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.spec_obj = dyn.load_sweep_spec(args.spec)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if args.optimizer not in args.spec_obj.optimizers:
        parser.error(f"--optimizer {args.optimizer!r} is not in the sweep ({', '.join(args.spec_obj.optimizers)}); the predictor never saw it")
    rates = args.spec_obj.learning_rates[args.optimizer]
    if not min(rates) <= args.base_lr <= max(rates):
        parser.error(f"--base-lr {args.base_lr} lies outside the sweep's {args.optimizer} rates [{min(rates)}, {max(rates)}]")
    swept = set(args.spec_obj.architectures)
    if any(arch in swept for arch in args.held_out):
        parser.error(f"held-out architectures must not be in the sweep: {[a.name for a in args.held_out if a in swept]}")
    args.sweep_dir = args.sweep_dir or os.path.join(args.out, "sweep")
    refuse_overwrite(parser, args.out, args.overwrite, writes=("metrics.json", "dataset.parquet", "*.png", "sweep"))
    return args


def epochs_needed(val_acc_epochs, targets):
    """First epoch (1-based) with validation accuracy >= target per run, NaN if none."""
    return np.array([dyn.epochs_to_target(v, t) for v, t in zip(val_acc_epochs, targets)])


def controller_study(args, config, predictor, data, progress):
    spec = args.spec_obj
    rates = sorted(spec.learning_rates[args.optimizer])
    grid = sorted(set(rates) | {args.base_lr})
    controller = dyn.LRController(config, min(rates), max(rates), interval=args.interval, warmup=args.interval)
    seeds, n = args.seeds, len(args.seeds)
    common = dict(batch_size=spec.batch_size, val_every=spec.val_every)
    rows, curves = [], {}
    for arch in progress(args.held_out):
        # Every grid rate x seed in one vmapped group; runs differing only in rate share init and batches.
        constant = dyn.train_runs(arch, args.optimizer, [lr for lr in grid for _ in seeds], seeds * len(grid), data, epochs=args.epochs, **common)
        val = constant.val_acc_epochs.reshape(len(grid), n, -1)
        test = constant.test_acc_epochs.reshape(len(grid), n, -1)
        base = grid.index(args.base_lr)
        targets = val[base, :, -1]
        per_rate = np.stack([epochs_needed(val[i], targets) for i in range(len(grid))])  # (rates, seeds)
        mean_epochs = np.where(np.isnan(per_rate), args.epochs + 1, per_rate).mean(1)
        best = int(np.argmin(mean_epochs))
        controlled = dyn.train_with_controller(
            arch, args.optimizer, args.base_lr, seeds, data, controller, predictor, epochs=args.epochs, target_accuracy=targets, **common
        )
        ctrl_epochs = np.where(controlled.epochs_to_target > 0, controlled.epochs_to_target, np.nan).astype(float)
        stop = np.where(np.isnan(ctrl_epochs), controlled.test_acc_epochs.shape[1], ctrl_epochs).astype(int) - 1
        base_idx = np.where(np.isnan(per_rate[base]), args.epochs, per_rate[base]).astype(int) - 1
        best_idx = np.where(np.isnan(per_rate[best]), args.epochs, per_rate[best]).astype(int) - 1
        rows.append(
            {
                "architecture": arch.name,
                "target_val_acc": targets.tolist(),
                "baseline_epochs": per_rate[base].tolist(),
                "controller_epochs": ctrl_epochs.tolist(),
                "best_constant_lr": grid[best],
                "best_constant_epochs": per_rate[best].tolist(),
                "baseline_test_acc_at_10": test[base, :, -1].tolist(),
                "baseline_test_acc_at_target": [float(test[base, s, base_idx[s]]) for s in range(n)],
                "controller_test_acc_at_stop": [float(controlled.test_acc_epochs[s, stop[s]]) for s in range(n)],
                "best_constant_test_acc_at_target": [float(test[best, s, best_idx[s]]) for s in range(n)],
                "controller_val_acc_at_stop": [float(controlled.val_acc_epochs[s, stop[s]]) for s in range(n)],
                "controller_lr_final": controlled.logs["lr"][:, -1].tolist(),
                "controller_lr_mean": controlled.logs["lr"].mean(1).tolist(),
            }
        )
        curves[arch.name] = {
            "baseline_loss": constant.logs["loss_ema"].reshape(len(grid), n, -1)[base],
            "controller_loss": controlled.logs["loss_ema"],
            "controller_lr": controlled.logs["lr"],
            "steps_per_epoch": data.train_x.shape[0] // spec.batch_size,
        }
    return rows, curves


def summarise(rows, epochs):
    def mean(values):
        values = np.asarray(values, float)
        return float(np.nanmean(values)) if np.any(np.isfinite(values)) else float("nan")

    out = []
    for row in rows:
        out.append(
            {
                "architecture": row["architecture"],
                "target_val_acc": mean(row["target_val_acc"]),
                "baseline_epochs": mean(row["baseline_epochs"]),
                "controller_epochs": mean(row["controller_epochs"]),
                "controller_not_reached": int(np.sum(np.isnan(np.asarray(row["controller_epochs"], float)))),
                "best_constant_lr": row["best_constant_lr"],
                "best_constant_epochs": mean(row["best_constant_epochs"]),
                "best_constant_not_reached": int(np.sum(np.isnan(np.asarray(row["best_constant_epochs"], float)))),
                "baseline_test_acc": mean(row["baseline_test_acc_at_10"]),
                "controller_test_acc": mean(row["controller_test_acc_at_stop"]),
            }
        )
    all_rows = lambda key: np.concatenate([np.asarray(r[key], float) for r in rows])
    pooled = {
        "baseline_epochs": float(np.nanmean(all_rows("baseline_epochs"))),
        "controller_epochs": float(np.nanmean(all_rows("controller_epochs"))),
        "controller_not_reached": int(np.sum(np.isnan(all_rows("controller_epochs")))),
        "best_constant_epochs": float(np.nanmean(all_rows("best_constant_epochs"))),
        "baseline_test_acc_at_10": float(np.mean(all_rows("baseline_test_acc_at_10"))),
        "controller_test_acc_at_stop": float(np.mean(all_rows("controller_test_acc_at_stop"))),
        "runs": int(all_rows("baseline_epochs").size),
        "budget_epochs": epochs,
    }
    return out, pooled


def table(summary, pooled):
    lines = [
        "| held-out architecture | target val acc | baseline epochs | controller epochs | best constant lr: epochs | test acc baseline @10 | test acc controller @stop |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        missed = f" ({row['controller_not_reached']} not reached)" if row["controller_not_reached"] else ""
        lines.append(
            f"| {row['architecture']} | {row['target_val_acc']:.3f} | {row['baseline_epochs']:.2f} | {row['controller_epochs']:.2f}{missed} | "
            f"{row['best_constant_lr']:g}: {row['best_constant_epochs']:.2f} | {row['baseline_test_acc']:.3f} | {row['controller_test_acc']:.3f} |"
        )
    missed = f" ({pooled['controller_not_reached']} not reached)" if pooled["controller_not_reached"] else ""
    lines.append(
        f"| **all {pooled['runs']} runs** | | **{pooled['baseline_epochs']:.2f}** | **{pooled['controller_epochs']:.2f}**{missed} | "
        f"{pooled['best_constant_epochs']:.2f} | {pooled['baseline_test_acc_at_10']:.3f} | {pooled['controller_test_acc_at_stop']:.3f} |"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    progress_bar = (lambda items: items) if args.no_progress else (lambda items: __import__("tqdm").tqdm(items, desc="study", unit="arch"))
    timings = {}

    sweep = dyn.run_sweep(args.spec_obj, args.sweep_dir, resume=True, progress=not args.no_progress)
    timings["sweep_s"] = time.time() - start
    runs = dyn.load_sweep(args.sweep_dir)
    table_all = dyn.build_dataset(runs, k=args.k, target_accuracy=args.target_accuracy, split_by="architecture")
    dyn.write_dataset(table_all, os.path.join(args.out, "dataset.parquet"), overwrite=True)  # derived from the sweep
    train_rows, val_rows = dyn.split_tables(table_all)

    tick = time.time()
    config, predictor = dyn.fit_predictor(train_rows, epochs=args.spec_obj.epochs, steps=args.predictor_steps)
    evaluation = dyn.evaluate_predictor(config, predictor, val_rows)
    timings["predictor_s"] = time.time() - tick

    tick = time.time()
    data = dyn.sweep.load_sweep_data(args.spec_obj)
    rows, curves = controller_study(args, config, predictor, data, progress_bar)
    timings["study_s"] = time.time() - tick
    summary, pooled = summarise(rows, args.epochs)
    timings["total_s"] = time.time() - start

    payload = {
        "config": {k: (v if not isinstance(v, list) or not v or not isinstance(v[0], dyn.Architecture) else [a.name for a in v])
                   for k, v in vars(args).items() if k != "spec_obj"},
        "sweep": {"runs": len(runs), "trained_now": len(sweep.trained), "skipped": len(sweep.skipped), "spec": args.spec_obj.to_dict()},
        "dataset": {"rows": table_all.num_rows, "train_rows": train_rows.num_rows, "val_rows": val_rows.num_rows,
                    "train_runs": len(set(train_rows.column("run_id").to_pylist())), "val_runs": len(set(val_rows.column("run_id").to_pylist()))},
        "predictor": {"config": dataclasses.asdict(config), "steps": args.predictor_steps, "held_out": evaluation},
        "controller": {"lr_bounds": [min(args.spec_obj.learning_rates[args.optimizer]), max(args.spec_obj.learning_rates[args.optimizer])],
                       "per_architecture": summary, "pooled": pooled, "per_seed": rows},
        "seconds": timings,
    }
    write_json_atomic(os.path.join(args.out, "metrics.json"), payload)
    print(predictor_table(evaluation))
    print(table(summary, pooled))
    print(f"total {timings['total_s']:.0f} s (sweep {timings['sweep_s']:.0f} s, predictor {timings['predictor_s']:.0f} s, study {timings['study_s']:.0f} s)")
    plot(args, config, predictor, val_rows, curves, summary)
    return 0


def predictor_table(evaluation):
    lines = [f"held-out runs: {evaluation['runs']}, k = {evaluation['k']}", "| target | method | MAE | RMSE | rows |", "|---|---|---|---|---|"]
    for target in ("loss_ahead", "final_val_acc", "epochs_to_target"):
        for method, errors in evaluation[target].items():
            lines.append(f"| {target} | {method} | {errors['mae']:.4f} | {errors['rmse']:.4f} | {errors['rows']} |")
    return "\n".join(lines)


def plot(args, config, predictor, val_rows, curves, summary):
    import jax
    plt = pyplot()
    names = list(curves)
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5.5), squeeze=False, sharex="col")
    for j, name in enumerate(names):
        c = curves[name]
        spe = c["steps_per_epoch"]
        for s in range(c["baseline_loss"].shape[0]):
            axes[0, j].plot(np.arange(c["baseline_loss"].shape[1]) / spe, c["baseline_loss"][s], color="tab:gray", lw=1, label="baseline" if s == 0 else None)
            axes[0, j].plot(np.arange(c["controller_loss"].shape[1]) / spe, c["controller_loss"][s], color="tab:red", lw=1, label="controller" if s == 0 else None)
            axes[1, j].plot(np.arange(c["controller_lr"].shape[1]) / spe, c["controller_lr"][s], color="tab:red", lw=1)
        axes[0, j].set(title=name, yscale="log")
        axes[1, j].set(xlabel="epoch", yscale="log")
    axes[0, 0].set_ylabel("train loss (EMA)")
    axes[1, 0].set_ylabel("controller learning rate")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, os.path.join(args.out, "loss_curves.png"), dpi=110)

    columns = dyn.predictor.table_columns(val_rows)
    out = np.asarray(jax.jit(lambda f: dyn.predict(config, predictor, f))(dyn.features(columns)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    ok = np.isfinite(columns["loss_ahead"])
    predicted = dyn.predictor.loss_ahead_from_output(columns["loss_ema"][ok], out[ok, 0])
    axes[0].scatter(columns["loss_ahead"][ok], predicted, s=2, alpha=0.3, label="predictor")
    axes[0].scatter(columns["loss_ahead"][ok], columns["loss"][ok], s=2, alpha=0.15, color="tab:gray", label="last value")
    lim = [max(1e-3, columns["loss_ahead"][ok].min()), columns["loss_ahead"][ok].max()]
    axes[0].plot(lim, lim, "k--", lw=1)
    axes[0].set(xscale="log", yscale="log", xlabel=f"actual loss {config.k} steps ahead", ylabel="predicted", title="held-out runs: loss ahead")
    axes[0].legend(fontsize=7, markerscale=4)
    axes[1].scatter(columns["final_val_acc"], out[:, 1], s=2, alpha=0.3, c=columns["progress"], cmap="viridis")
    axes[1].plot([0, 1], [0, 1], "k--", lw=1)
    axes[1].set(xlabel="actual final val accuracy", ylabel="predicted", title="final accuracy (colour: epoch)")
    fig.tight_layout()
    save_figure(fig, os.path.join(args.out, "predicted_vs_actual.png"), dpi=110)

    fig, ax = plt.subplots(figsize=(1.4 * len(summary) + 2, 3.6))
    xs = np.arange(len(summary))
    ax.bar(xs - 0.27, [r["baseline_epochs"] for r in summary], 0.27, label="baseline (lr %g)" % args.base_lr, color="tab:gray")
    ax.bar(xs, [r["controller_epochs"] for r in summary], 0.27, label="controller", color="tab:red")
    ax.bar(xs + 0.27, [r["best_constant_epochs"] for r in summary], 0.27, label="best constant lr (hindsight)", color="tab:blue")
    ax.set_xticks(xs, [r["architecture"] for r in summary], rotation=20, fontsize=7)
    ax.set(ylabel="epochs to the baseline's 10-epoch val acc", ylim=(0, args.epochs + 0.5))
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, os.path.join(args.out, "epochs_to_target.png"), dpi=110)


if __name__ == "__main__":
    sys.exit(run_study(main, "experiments/dynamics/run.py", rerun="run the same command again: the sweep continues where it stopped"))
