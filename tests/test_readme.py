"""The README's code runs as written, including metax's own README snippet verbatim."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED_001 = ROOT.parent / "shared" / "seeds" / "001_7c4e36e2f8ff2f31.txt"

# The code of metax's README (seed 001), character for character.
METAX_SNIPPET = '''meta_model = metax.module.LearnedInit(
    loss_fn_inner=metax.energy.SquaredError(),
    loss_fn_outer=metax.energy.SquaredError(),
    base_learner=hk.transform_with_state(
        lambda x, is_training: hk.nets.MLP([64, 64, 1])(x)
    ),
    output_dim=1,
)
meta_learner = metax.learner.ModelAgnosticMetaLearning(
    meta_model=meta_model,
    batch_size=None,  # full batch GD
    steps_inner=10,
    optim_fn_inner=optax.adamw(0.1),
    optim_fn_outer=optax.adamw(0.001),
    first_order=False,
)
'''


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_snippet_is_the_seed_verbatim():
    if not SEED_001.exists():
        pytest.skip("shared/seeds not beside this checkout")
    seed_blocks = python_blocks(SEED_001.read_text())
    assert seed_blocks and seed_blocks[0] == METAX_SNIPPET


def test_readme_snippets_run(capsys):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert any(METAX_SNIPPET in block for block in blocks)
    namespace = {}
    exec(compile(blocks[0], "README block 1", "exec"), namespace)
    import jax
    import jax.flatten_util

    learner, model = namespace["meta_learner"], namespace["meta_model"]
    assert learner.steps_inner == 10 and learner.first_order is False and model.output_dim == 1
    # The snippet's objects work: reset and a jitted evaluation on sinusoid tasks.
    import metax

    batch = metax.data.sample_metabatch(jax.random.PRNGKey(0), metax.data.make_task_sampler("sinusoid", 10, 10), 8)
    state = learner.reset(jax.random.PRNGKey(1), batch.train.x[0])
    _, metrics = jax.jit(learner.eval, static_argnames="steps")(jax.random.PRNGKey(2), state, batch, 10)
    assert jax.numpy.isfinite(metrics["loss_outer"])
    # adapt runs the snippet's ten adamw(0.1) steps; its first loss is the plain MSE at init.
    task = jax.tree_util.tree_map(lambda a: a[0], batch)
    params, net_state = model.reset_params(jax.random.PRNGKey(3), state.hparams, state.hstate, task.train.x)
    (net_state, adapted), inner = learner.adapt(
        jax.random.PRNGKey(4), net_state, state.hstate, params, state.hparams, task.train, 10
    )
    pred, _ = model.base_learner.apply(params.base_learner, {}, None, task.train.x, True)
    expected = jax.numpy.mean((pred - task.train.y) ** 2)
    assert abs(float(inner["loss_inner_init"]) - float(expected)) < 1e-5
    moved = jax.flatten_util.ravel_pytree(adapted)[0] - jax.flatten_util.ravel_pytree(params)[0]
    assert 0 < float(jax.numpy.linalg.norm(moved)) < 100

    exec(compile(blocks[1], "README block 2", "exec"), {})
    printed = capsys.readouterr().out
    before_mse, after_mse = [float(v) for v in re.findall(r"query MSE .*?:\s+([0-9.]+)", printed)]
    assert after_mse < 0.5 * before_mse and after_mse < 1.5


def test_second_order_through_adam_needs_eps_root():
    """The README's note: optax.adam's default eps_root=0 makes second-order MAML NaN
    wherever an inner gradient is exactly zero (dead ReLU units); eps_root > 0 fixes it."""
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import optax
    from jax.flatten_util import ravel_pytree

    import metax

    task = metax.data.sample_metabatch(jax.random.PRNGKey(0), metax.data.make_task_sampler("sinusoid", 10, 10), 1)
    task = jax.tree_util.tree_map(lambda a: a[0], task)
    net = hk.transform_with_state(lambda x, is_training: hk.nets.MLP([64, 64, 1])(x))

    def learner_with(eps_root):
        model = metax.module.LearnedInit(metax.energy.SquaredError(), metax.energy.SquaredError(), net, output_dim=1)
        inner = optax.adamw(0.1, eps_root=eps_root)  # optax.adamw(0.1)'s default: eps_root=0.0
        return metax.learner.ModelAgnosticMetaLearning(model, None, 10, inner, optax.adamw(1e-3), False)

    state = learner_with(0.0).reset(jax.random.PRNGKey(1), task.train.x)

    # eps_root traced: both settings run one compiled program (a constant would compile two).
    @jax.jit
    def nonfinite_meta_gradients(eps_root):
        hgrads = learner_with(eps_root).grad(jax.random.PRNGKey(2), state.hstate, state.hparams, task)[0]
        return jnp.sum(~jnp.isfinite(ravel_pytree(hgrads)[0]))

    nonfinite = [int(nonfinite_meta_gradients(jnp.float32(eps_root))) for eps_root in (0.0, 1e-8)]
    assert nonfinite[0] > 0 and nonfinite[1] == 0, nonfinite


def block_with(text, marker, language="python"):
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, marker
    return found[0]


def test_training_from_python_snippet_runs():
    code = block_with((ROOT / "README.md").read_text(), "metax.experiment.train(")
    namespace = {}
    exec(compile(code, "README: training from Python", "exec"), namespace)
    summary = namespace["result"].summary
    # 500 meta-steps already beat the untrained initialisation on the same held-out tasks.
    assert summary["held_out"]["loss_outer"]["mean"] < summary["held_out_initial"]["loss_outer"]["mean"]


def test_plugin_learner_snippet_runs_from_its_config(tmp_path, capsys):
    from metax.experiment.cli import main

    text = (ROOT / "README.md").read_text()
    (tmp_path / "my_learner.py").write_text(block_with(text, "# my_learner.py"))
    (tmp_path / "my_config.yaml").write_text(block_with(text, "# my_config.yaml", "yaml"))
    args = ["run", str(tmp_path / "my_config.yaml"), "--out", str(tmp_path / "run"), "--no-progress", "--no-plots",
            "--set", "train.steps=3", "--set", "eval.tasks=4", "--set", "model.hidden_dims=[8]"]
    assert main(args) == 0
    assert "held-out loss_outer after 3 meta-steps" in capsys.readouterr().out
    assert main(["list", "learners", "--plugin", str(tmp_path / "my_learner.py")]) == 0
    assert "scaled_maml" in capsys.readouterr().out


def test_writing_a_learner_example_runs_and_matches_the_closed_form():
    """The README's iMAML-with-Neumann learner: its block runs as written, and its
    meta-gradient equals the exact ridge hypergradient (tests/ridge.py) in float64."""
    import jax
    import numpy as np
    import optax

    from conftest import x64
    from ridge import closed_form, inner_lr, ridge_module, ridge_task, theta_of

    block = block_with((ROOT / "README.md").read_text(), "class NeumannIMAML")
    assert len(block.splitlines()) < 70
    namespace = {}
    exec(compile(block, "README: writing a learner", "exec"), namespace)
    assert np.isfinite(float(namespace["metrics"]["loss_outer"]))
    assert float(namespace["metrics"]["nonfinite_inner"]) == 0
    learner_cls = namespace["NeumannIMAML"]

    with x64():
        task = ridge_task(0)
        learner = learner_cls(ridge_module(), None, 120, optax.sgd(inner_lr(task)), optax.sgd(1.0), terms=300, alpha=0.3)
        state = learner.reset(jax.random.PRNGKey(0), task.train.x)
        hparams = jax.tree_util.tree_map(lambda w: w + 0.5, state.hparams)
        hgrads, _, _ = jax.jit(learner.grad)(jax.random.PRNGKey(1), state.hstate, hparams, task)
        _, exact, _ = closed_form(task, theta_of(hparams))
        assert np.linalg.norm(theta_of(hgrads) - exact) / np.linalg.norm(exact) < 1e-6
    # Subclassing with end_point_gradient = True buys the module check.
    plain = ridge_module(reg_strength=None)
    with pytest.raises(ValueError, match="NeumannIMAML differentiates at the inner loop's end point"):
        learner_cls(plain, None, 5, optax.sgd(0.1), optax.sgd(0.1))
