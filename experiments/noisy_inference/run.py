"""Noisy latent inference in a VAE: fixed update rules vs a learned MetadynamicKernel.

    python experiments/noisy_inference/run.py --out runs/noisy_inference
    python experiments/noisy_inference/run.py --out runs/mnist --mnist /path/to/idx/files

Tests Torch-MetaDyn's claim (seed 000): with noisy gradients, a learned update rule
`delta_z = f_psi(z, grad)` finds better latents than fixed gradient descent.

1. Data: scikit-learn's 8x8 digits (offline; pixels scaled to [0, 1]), or MNIST from
   user-supplied IDX files (`--mnist DIR`). A fixed permutation splits off held-out images.
2. A VAE (MLP encoder/decoder, Bernoulli pixels) is trained on the training images.
3. Inference: for an image x, minimise the MAP objective
   f(z) = -log p(x | z) - log N(z; 0, I) (up to a constant) over z, from z0 = 0, for
   `--steps` steps. Every gradient gets Gaussian noise of norm ~ level * G, where G is the
   median gradient norm at z0 over training images, for each `--noise-levels` level.
4. Methods, each tuned on training images at each noise level:
   gd (SGD), momentum (SGD, momentum 0.9) and adam, with the learning rate picked by grid
   search (mean f after the last step); kernel: a MetadynamicOptimizer (recurrent memory
   and step fraction t / T) started as gradient descent with the tuned gd rate, then
   meta-trained by backpropagation through the whole noisy inference run.
5. Held-out images: f after T steps (mean and 95% interval), and the steps needed to come
   within `--tolerance` of the noise-free optimum f* (as a fraction of f(z0) - f*), where
   f* is the best value found by long noise-free Adam runs from z0 and from the encoder's
   mean (and by any method's iterate). All methods see the same noise draws.

Every method runs through the one loop below, `infer`: a `lax.scan` of
`metax.learner.gradient_step` with an optax transformation (the learned kernel is
`MetadynamicOptimizer.optimizer(psi)`) behind `optax.add_noise`, recording the
noise-free objective at every step. The VAE and the kernel's meta-training run through
`metax.learner.fit`. Writes metrics.json and inference_comparison_noisy.png to --out.
"""

import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import metax
from metax.experiment import format_interval, markdown_table, refuse_overwrite, write_json_atomic
from metax.experiment.args import comma_list, non_negative_float, non_negative_int, positive_float, positive_int, study_parser
from metax.experiment.plots import pyplot, save_figure
from metax.experiment.signals import run_study

METHODS = ("gd", "momentum", "adam", "kernel")


def parse_args(argv):
    parser = study_parser(__doc__.splitlines()[0], "runs/noisy_inference")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, not a result)")
    parser.add_argument("--mnist", default=None, help="folder with MNIST IDX files (default: sklearn digits)")
    parser.add_argument("--noise-levels", type=comma_list(non_negative_float), default="0,0.5,1,2",
                        help="noise norm in units of the typical gradient norm")
    parser.add_argument("--steps", type=positive_int, default=50, help="inference steps T")
    parser.add_argument("--latent-dim", type=positive_int, default=8)
    parser.add_argument("--hidden", type=positive_int, default=128, help="VAE hidden width")
    parser.add_argument("--vae-steps", type=positive_int, default=4000)
    parser.add_argument("--eval-images", type=positive_int, default=597, help="held-out images (digits: at most 597)")
    parser.add_argument("--tune-images", type=positive_int, default=512, help="training images for the rate grid search")
    parser.add_argument("--lr-grid", type=positive_int, default=25, help="learning rates tried per method (log grid)")
    parser.add_argument("--meta-steps", type=non_negative_int, default=3000, help="meta-training steps of the kernel")
    parser.add_argument("--meta-batch", type=positive_int, default=64)
    parser.add_argument("--meta-lr", type=positive_float, default=3e-3)
    parser.add_argument("--kernel-hidden", type=comma_list(positive_int), default="64,64")
    parser.add_argument("--kernel-memory", type=non_negative_int, default=16)
    parser.add_argument("--optimum-steps", type=positive_int, default=3000, help="noise-free Adam steps for f*")
    parser.add_argument("--tolerance", type=positive_float, default=0.05, help="fraction of f(z0) - f* counted as converged")
    if parser.parse_known_args(argv)[0].quick:  # smaller defaults; explicit flags still win
        parser.set_defaults(
            vae_steps=150, meta_steps=20, steps=10, optimum_steps=200, eval_images=64, tune_images=64,
            lr_grid=6, meta_batch=16, kernel_hidden="16", kernel_memory=4, hidden=32,
        )
    args = parser.parse_args(argv)
    if args.mnist is not None and not os.path.isdir(args.mnist):
        parser.error(f"--mnist {args.mnist!r} is not a folder")
    refuse_overwrite(parser, args.out, args.overwrite, writes=("metrics.json", "inference_comparison_noisy.png"))
    return args, parser


# -- data and the VAE -----------------------------------------------------------------------


def load_images(args, parser):
    """`(train, held_out, name)`: float32 images in [0, 1], flattened to `(n, pixels)`."""
    if args.mnist is not None:
        train, _ = metax.data.load_mnist(args.mnist, "train")
        test, _ = metax.data.load_mnist(args.mnist, "test")
        train, test = train.reshape(len(train), -1), test.reshape(len(test), -1)
        if args.eval_images > len(test):
            parser.error(f"--eval-images {args.eval_images} > {len(test)} MNIST test images")
        return train, test[: args.eval_images], "mnist"
    from sklearn.datasets import load_digits

    images = load_digits().images.reshape(-1, 64).astype(np.float32) / 16.0
    order = np.random.default_rng(1234).permutation(len(images))
    held_out, train = images[order[:597]], images[order[597:]]
    if args.eval_images > len(held_out):
        parser.error(f"--eval-images {args.eval_images} > {len(held_out)} held-out digits")
    return train, held_out[: args.eval_images], "sklearn_digits"


def train_vae(rng, train, args):
    """Adam on the negative ELBO (batches of 128); returns the params, the pure functions
    and the last loss."""
    vae = metax.models.bernoulli_vae(train.shape[1], args.latent_dim, args.hidden)
    rng_init, rng_train = jax.random.split(rng)
    data = jnp.asarray(train)
    params = vae.init(rng_init, data[:2])
    optimizer = optax.adam(1e-3)

    def loss(params, key, data):
        key_batch, key_noise = jax.random.split(key)
        x = data[jax.random.randint(key_batch, (128,), 0, data.shape[0])]
        return jnp.mean(sum(vae.apply[0](params, x, key_noise)))

    progress = tqdm(total=args.vae_steps, desc="VAE", unit="step", leave=False)
    step = metax.learner.gradient_step(loss, optimizer)
    (params, _), values = metax.learner.fit(step, (params, optimizer.init(params)), rng_train, args.vae_steps, data, progress=progress)
    progress.close()
    return params, vae, float(values[-1])


# -- the inference problem and its one loop ------------------------------------------------


def map_objective(vae, params):
    """`f(z, x)` per image: Bernoulli negative log-likelihood + 0.5 |z|^2, shape `(batch,)`."""

    def f(z, x):
        logits = vae.apply[2](params, z)
        return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=-1) + 0.5 * jnp.sum(z**2, axis=-1)

    return f


def infer(objective, optimizer, x, z0, rng, steps, noise_std):
    """THE inference loop of this study, shared by every method.

    `steps` updates of `optimizer` (any optax transformation, the learned kernel
    included) on z, behind `optax.add_noise` (gamma 0: a constant N(0, noise_std^2) per
    coordinate, drawn from `rng`, so every method sees the same noise). Returns the
    noise-free objective at z_0 ... z_T, shape `(steps + 1, batch)`, and the final z.
    """

    def loss(z, _):  # images are independent: the gradient of the sum is each image's own
        values = objective(z, x)
        return jnp.sum(values), values

    # add_noise wants a typed key; gamma 0 keeps the variance constant (no annealing).
    noisy = optax.chain(optax.add_noise(noise_std**2, 0.0, jax.random.wrap_key_data(rng)), optimizer)
    step = metax.learner.gradient_step(loss, noisy, has_aux=True)
    (z, _), (_, values) = jax.lax.scan(step, (z0, noisy.init(z0)), None, length=steps)
    return jnp.concatenate([values, objective(z, x)[None]]), z


BASELINES = {
    "gd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
}
LR_RANGES = {"gd": (1e-4, 3.0), "momentum": (1e-5, 0.3), "adam": (1e-4, 3.0)}


@functools.partial(jax.jit, static_argnums=(0, 1, 5))
def rate_scores(objective, method, x, z0, rng, steps, noise_std, rates):
    """Mean objective after `steps` steps for each rate (the same noise for every rate)."""
    final = lambda lr: jnp.mean(infer(objective, BASELINES[method](lr), x, z0, rng, steps, noise_std)[0][-1])
    return jax.lax.map(final, rates)


def tune_rate(objective, method, x, z0, rng, steps, noise_std, grid):
    """The grid rate with the lowest mean objective after `steps` steps."""
    rates = np.geomspace(*LR_RANGES[method], grid).astype(np.float32)
    scores = np.asarray(rate_scores(objective, method, x, z0, rng, steps, noise_std, jnp.asarray(rates)))
    scores = np.where(np.isfinite(scores), scores, np.inf)
    best = int(np.argmin(scores))
    return float(rates[best]), {"rates": rates.tolist(), "scores": scores.tolist(), "at_grid_edge": best in (0, grid - 1)}


def make_meta_trainer(objective, kernel, x_train, latent_dim, args):
    """`train(psi, rng, noise_std, progress) -> (psi, losses)`: backpropagation through the
    whole noisy inference run (mean f after T steps), compiled once for every noise level."""
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.meta_lr))
    data = jnp.asarray(x_train)

    def loss(psi, key, noise_std):
        key_batch, key_noise = jax.random.split(key)
        x = data[jax.random.randint(key_batch, (args.meta_batch,), 0, data.shape[0])]
        z0 = jnp.zeros((x.shape[0], latent_dim))
        return jnp.mean(infer(objective, kernel.optimizer(psi), x, z0, key_noise, args.steps, noise_std)[0][-1])

    step = metax.learner.gradient_step(loss, optimizer)

    def train(psi, rng, noise_std, progress):
        carry = (psi, optimizer.init(psi))
        (psi, _), losses = metax.learner.fit(step, carry, rng, args.meta_steps, noise_std, first=1, progress=progress)
        return psi, [float(v) for v in losses]

    return train


# -- statistics and outputs ----------------------------------------------------------------


def interval(values):
    entry = metax.experiment.interval(values)
    return entry["mean"], entry["ci95"]


def steps_to_tolerance(curves, optimum, tolerance):
    """First step t with f(z_t) - f* <= tolerance * (f(z_0) - f*), per image (inf if never)."""
    gap = curves - optimum[None]
    reached = gap <= tolerance * np.maximum(gap[0], 1e-12)[None]
    first = np.argmax(reached, axis=0).astype(np.float64)
    return np.where(reached.any(axis=0), first, np.inf)


def summarize(curves, optimum, tolerance):
    final = curves[-1]
    steps = steps_to_tolerance(curves, optimum, tolerance)
    mean, half = interval(final)
    gap_mean, gap_half = interval(final - optimum)
    return {
        "final_objective": mean,
        "final_objective_ci95": half,
        "final_gap": gap_mean,
        "final_gap_ci95": gap_half,
        "steps_to_tolerance_median": float(np.median(steps)) if np.isfinite(np.median(steps)) else None,
        "fraction_within_tolerance": float(np.mean(np.isfinite(steps))),
        "curve_gap_mean": np.mean(curves - optimum[None], axis=1).tolist(),
        "curve_gap_ci95": [metax.experiment.interval(gap)["ci95"] for gap in curves - optimum[None]],
    }


def summarize_levels(results, raw, optimum, tolerance):
    """Per level and method summaries against `optimum`, and the kernel's paired
    difference to the best fixed method (negative: the kernel ends lower)."""
    summaries = {}
    for level, curves in raw.items():
        methods = {m: summarize(curves[m], optimum, tolerance) for m in METHODS}
        best_fixed = min(BASELINES, key=lambda m: methods[m]["final_objective"])
        mean, half = interval(curves["kernel"][-1] - curves[best_fixed][-1])
        summaries[level] = {
            **results[level],
            "methods": methods,
            "kernel_minus_best_fixed": {"best_fixed": best_fixed, "mean": mean, "ci95": half},
        }
    return summaries


def table(results, levels):
    rows = []
    for level in levels:
        cells = []
        for method in METHODS:
            entry = results[str(level)]["methods"][method]
            steps = entry["steps_to_tolerance_median"]
            steps = "not reached" if steps is None else f"{steps:.0f}"
            interval = {"mean": entry["final_objective"], "ci95": entry["final_objective_ci95"]}
            cells.append(f"{format_interval(interval, 2)} ({steps}, {100 * entry['fraction_within_tolerance']:.0f}%)")
        rows.append([f"{level:g}"] + cells)
    return markdown_table(["noise"] + list(METHODS), rows)


def plot(results, levels, args, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(levels), figsize=(3.6 * len(levels), 3.4), squeeze=False)
    colours = {"gd": "tab:gray", "momentum": "tab:blue", "adam": "tab:orange", "kernel": "tab:red"}
    steps = np.arange(args.steps + 1)
    for ax, level in zip(axes[0], levels):
        for method in METHODS:
            entry = results[str(level)]["methods"][method]
            mean, half = np.asarray(entry["curve_gap_mean"]), np.asarray(entry["curve_gap_ci95"])
            label = "learned kernel" if method == "kernel" else method
            ax.plot(steps, mean, color=colours[method], label=label)
            ax.fill_between(steps, np.maximum(mean - half, 1e-3), mean + half, color=colours[method], alpha=0.25)
        ax.set_yscale("log")
        ax.set(title=f"noise {level:g} x typical |grad|", xlabel="inference step")
    axes[0][0].set_ylabel("f(z_t) - f*  (mean, 95% band)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# -- the study ------------------------------------------------------------------------------


def main(argv=None) -> int:
    args, parser = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    rng = jax.random.PRNGKey(args.seed)
    rng_vae, rng_tune, rng_meta, rng_eval = jax.random.split(rng, 4)
    train, held_out, dataset = load_images(args, parser)
    params, vae, vae_loss = train_vae(rng_vae, train, args)
    objective = map_objective(vae, params)
    latent = args.latent_dim
    x_tune = jnp.asarray(train[: args.tune_images])
    x_eval = jnp.asarray(held_out)
    z_tune, z_eval = jnp.zeros((x_tune.shape[0], latent)), jnp.zeros((x_eval.shape[0], latent))

    # Typical gradient norm at z0 (training images) sets the noise unit.
    grad_norms = jnp.linalg.norm(jax.vmap(jax.grad(lambda z, x: objective(z[None], x[None])[0]))(z_tune, x_tune), axis=-1)
    typical = float(jnp.median(grad_norms))

    # Noise-free optimum f* on the held-out images: long Adam runs from z0 and from the encoder mean.
    mu_eval = vae.apply[1](params, x_eval)[0]
    best_of_run = jax.jit(lambda lr, z_start: infer(objective, optax.adam(lr), x_eval, z_start, rng_eval, args.optimum_steps, 0.0)[0].min(axis=0))
    optimum_runs = [best_of_run(lr, z_start) for lr in (0.01, 0.05) for z_start in (z_eval, mu_eval)]
    optimum = np.asarray(jnp.min(jnp.stack(optimum_runs), axis=0))

    # Compiled once each; rates and noise levels are traced arguments.
    run_baseline = jax.jit(
        lambda method, lr, noise_std: infer(objective, BASELINES[method](lr), x_eval, z_eval, rng_eval, args.steps, noise_std)[0],
        static_argnums=0,
    )
    kernel = metax.kernel.MetadynamicOptimizer(
        latent, tuple(args.kernel_hidden), memory_size=args.kernel_memory, step_fraction=True, horizon=args.steps,
        check_finite=False,
    )
    run_kernel = jax.jit(lambda psi, noise_std: infer(objective, kernel.optimizer(psi), x_eval, z_eval, rng_eval, args.steps, noise_std)[0])
    meta_train = make_meta_trainer(objective, kernel, train, latent, args)
    header = {
        "config": dict(vars(args)),
        "dataset": dataset,
        "train_images": int(train.shape[0]),
        "eval_images": int(x_eval.shape[0]),
        "vae_final_loss": vae_loss,
        "typical_grad_norm": typical,
    }
    raw, results = {}, {}
    progress = tqdm(total=len(args.noise_levels) * args.meta_steps, desc="meta-training kernels", unit="step")
    for level in args.noise_levels:
        noise_std = level * typical / np.sqrt(latent)  # E|noise| ~ level * typical
        key = jax.random.fold_in(rng_tune, int(round(level * 1000)))
        tuned, curves = {}, {}
        for method in BASELINES:
            lr, search = tune_rate(objective, method, x_tune, z_tune, key, args.steps, noise_std, args.lr_grid)
            tuned[method] = {"lr": lr, **search}
            curves[method] = np.asarray(run_baseline(method, lr, noise_std))
        # The kernel starts as gradient descent with gd's tuned rate (its gradient-descent
        # path's log step), then is meta-trained.
        rng_level = jax.random.fold_in(rng_meta, int(round(level * 1000)))
        psi = kernel.init(jax.random.fold_in(rng_level, 0), jnp.zeros((args.meta_batch, latent)))
        psi["metadynamic_kernel"]["log_step_size"] = jnp.log(jnp.float32(tuned["gd"]["lr"]))
        psi, meta_losses = meta_train(psi, rng_level, noise_std, progress)
        curves["kernel"] = np.asarray(run_kernel(psi, noise_std))
        tenth = max(1, len(meta_losses) // 10)
        tuned["kernel"] = {
            "init_step_size": tuned["gd"]["lr"],
            "meta_loss_first_tenth": float(np.mean(meta_losses[:tenth])) if meta_losses else None,
            "meta_loss_last_tenth": float(np.mean(meta_losses[-tenth:])) if meta_losses else None,
        }
        # f*: the best value any run reached, so every gap is >= 0.
        optimum = np.minimum(optimum, np.min([c.min(axis=0) for c in curves.values()], axis=0))
        raw[str(level)] = curves
        results[str(level)] = {"noise_std_per_coordinate": float(noise_std), "tuning": tuned}
        summaries = summarize_levels(results, raw, optimum, args.tolerance)
        payload = {**header, "optimum_mean": float(optimum.mean()), "seconds": time.time() - start,
                   "complete": level == args.noise_levels[-1], "results": summaries}
        write_json_atomic(os.path.join(args.out, "metrics.json"), payload)  # after every level
    progress.close()
    results = summaries
    print(f"{dataset}: {x_eval.shape[0]} held-out images, T = {args.steps} steps; cells: f(z_T) mean ± 95% CI (median steps to tolerance, % within tolerance)")
    print(table(results, args.noise_levels))
    plot(results, args.noise_levels, args, os.path.join(args.out, "inference_comparison_noisy.png"))
    return 0


if __name__ == "__main__":
    sys.exit(run_study(main, "experiments/noisy_inference/run.py"))
