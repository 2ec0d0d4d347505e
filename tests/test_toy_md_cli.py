"""The toy mirror-descent experiment script: outputs, values and bad input."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "toy_md", "run_toy_md.py")
_spec = importlib.util.spec_from_file_location("run_toy_md", SCRIPT)
run_toy_md = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_toy_md)

SEED_FLAGS = [
    "--samplers", "--beta-schedule", "--lambda-scale", "--K", "--refresh-L", "--action-steps-per-level",
    "--kl-runs", "--kl-bins", "--sweep-max-refresh", "--sweep-runs", "--sigma-a", "--mu-a", "--qA", "--mu-Q",
    "--alpha", "--sigma-sprime", "--d", "--mu-eps", "--seed",
]
QUICK = ["--n-chains", "600", "--kl-runs", "2", "--kl-bins", "25", "--sweep-max-refresh", "1",
         "--sweep-runs", "1", "--n-steps", "40"]


def test_every_flag_of_the_seed_exists():
    options = {s for a in run_toy_md.build_parser()._actions for s in a.option_strings}
    assert set(SEED_FLAGS) <= options, set(SEED_FLAGS) - options


def test_quick_run_writes_every_artifact_with_sane_values(tmp_path, capsys):
    out = tmp_path / "toy"
    assert run_toy_md.main(QUICK + ["--samplers", "pc_ula,gibbs", "--mu-Q", "3.0", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "pc_ula: action KL" in captured.out
    assert "toy_md: 100%" in captured.err  # the progress bar: 2 samplers + 1 refresh sweep
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask  # as the plots, not 0600
    for name in ("pc_ula", "gibbs"):
        for stem in ("action_match", "state_match"):
            assert (out / f"{stem}_{name}.png").is_file() and (out / f"{stem}_{name}_gt.png").is_file()
        with Image.open(out / f"anim_{name}.gif") as gif:
            assert gif.n_frames > 1
    assert (out / "action_kl_vs_refresh.png").is_file() and (out / "state_kl_vs_refresh.png").is_file()

    m = json.loads((out / "metrics.json").read_text())
    # mu_Q = 3: tau = 2, mean = (0 + 3) / 2, state mean = 1.5 + d s = 2.
    assert m["exact"]["action_mean"] == pytest.approx(1.5) and m["exact"]["action_var"] == pytest.approx(0.5)
    assert m["exact"]["state_mean"] == pytest.approx(2.0) and m["exact"]["state_var"] == pytest.approx(0.75)
    assert m["md_reweighting"]["weighted_action_mean"] == pytest.approx(1.5, abs=0.05)
    assert m["conditional_invariance"]["tilted_window"]["p_value"] > 0.01
    floor = m["kl_exact_samples"]["action"]["mean"]
    for name in ("pc_ula", "gibbs"):
        s = m["samplers"][name]
        assert s["action_kl"]["mean"] < 4 * floor + 0.01 and s["state_kl"]["mean"] < 4 * floor + 0.01, s
    assert m["samplers"]["gibbs"]["integrated_autocorr_time"] > 1.0
    # Without refreshes the state is stale; one exact refresh per level fixes it.
    sweep = m["refresh_sweep"]["pc_ula"]["state_kl_mean"]
    assert sweep[0] > 10 * sweep[1]
    assert m["refresh_sweep"]["refresh_L"] == [0, 1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sigma-a", "0"], "--sigma-a must be a positive standard deviation, got 0"),
        (["--sigma-sprime", "-0.2"], "--sigma-sprime must be a positive standard deviation, got -0.2"),
        (["--qA", "-0.6", "--lambda-scale", "2"], "not normalisable: precision 1/sigma_a^2 + beta*qA = 1 + 2*(-0.6) = -0.2"),
        (["--samplers", "pc_ula,hmc"], "unknown sampler 'hmc'; valid samplers: importance, imh, ula, mala"),
        (["--beta-schedule", "cosine"], "valid schedules: linear, late_constant, late_ramp, tfg_plus_final_mala, sigma_power"),
        (["--refresh-L", "-1"], "--refresh-L must be >= 0, got -1"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    assert run_toy_md.main(argv + ["--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("run_toy_md.py: error: ")
    assert not (tmp_path / "bad").exists()


def test_script_exit_code_from_the_shell():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, SCRIPT, "--beta-schedule", "nope"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "unknown beta schedule 'nope'" in proc.stderr


def test_default_output_is_outside_the_source_tree_and_runs_are_not_overwritten(tmp_path, capsys):
    args = run_toy_md.build_parser().parse_args([])
    assert args.out == os.path.join("runs", "toy_md") and not os.path.isabs(args.out)
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "metrics.json").write_text('{"kept": true}')
    assert run_toy_md.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "metrics.json exists; pass --overwrite or choose another --out" in err and err.count("\n") == 1
    assert json.loads((out / "metrics.json").read_text()) == {"kept": True}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_write_json_atomic_gives_the_umask_mode(tmp_path):
    from metax.experiment import write_json_atomic

    umask = os.umask(0o027)
    try:
        write_json_atomic(str(tmp_path / "m.json"), {"a": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o640
