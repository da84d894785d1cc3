"""Per-model tuned timesteps (ddpmkit/runs/tuning.py, ``ddpmkit tune-steps``): the search on an exact
oracle (never worse than its start, also on held-out draws; deterministic), and the run plumbing on
a tiny trained 2-D model (saved, used by ``Run.sample`` and ``ddpmkit sample``, validated on load)."""

import copy
import json

import pytest
import torch

import ddpmkit
from ddpmkit import samplers as S
from ddpmkit.cli import main
from ddpmkit.errors import UserError
from ddpmkit.oracles import GaussianMixtureOracle
from ddpmkit.runs import Run
from ddpmkit.runs.tuning import load_tuned, search_timesteps, tune_steps, tuned_path
from helpers import assert_user_error, run_cli

T = 1000
ABAR = torch.cumprod(1.0 - ddpmkit.linear_beta_schedule(T), 0)
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


# =========================================================================== the search, on an oracle
def _noise(n, seed):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture(scope="module")
def ring_problem():
    """A sharp ring of 8 Gaussians; UniPC-bh1 at 8 calls against a 250-call DPM-Solver++(3M) reference."""
    ring = GaussianMixtureOracle.ring(ABAR, std=0.05)
    ref_ts = S.sampling_timesteps(T, 250, "snr_root", ABAR)
    sets = {}
    for name, seed in (("train", 0), ("held", 1)):
        x_T = _noise(300, seed)
        sets[name] = (x_T, S.dpmpp_3m_sample(ring.denoise, x_T, ref_ts, ABAR))

    def objective(ts, which="train"):
        x_T, ref = sets[which]
        return float((S.unipc_bh1_sample(ring.denoise, x_T, ts, ABAR) - ref).pow(2).mean())

    return objective


def test_search_improves_on_its_start_also_on_held_out_draws_and_is_deterministic(ring_problem):
    found = search_timesteps(ring_problem, ABAR, 8, rounds=3)
    assert len(found.timesteps) == 8 and found.timesteps[0] == T - 1
    assert all(a > b >= 0 for a, b in zip(found.timesteps, found.timesteps[1:]))
    # the start is the best standard spacing, found by an independent evaluation of each
    starts = {sp: ring_problem(S.sampling_timesteps(T, 8, sp, ABAR).tolist()) for sp in S.DEFAULT_SPACING.values()}
    assert found.start <= min(starts.values())
    assert found.tuned == pytest.approx(ring_problem(found.timesteps), rel=1e-12)
    assert found.tuned < 0.7 * found.start, found  # measured: 0.34
    start_ts = S.sampling_timesteps(T, 8, found.start_spacing, ABAR).tolist()
    assert ring_problem(found.timesteps, "held") < 0.8 * ring_problem(start_ts, "held")  # measured: 0.38
    assert search_timesteps(ring_problem, ABAR, 8, rounds=3) == found  # same result twice


def test_search_refuses_bad_requests(ring_problem):
    for steps in (1, T, 0, 2.5, True):
        with pytest.raises(UserError, match="tuned steps"):
            search_timesteps(ring_problem, ABAR, steps)
    with pytest.raises(UserError, match="rounds"):
        search_timesteps(ring_problem, ABAR, 5, rounds=0)


# =========================================================================== a tiny trained run
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from ddpmkit.config import load_config
    from ddpmkit.runs import train

    over = {
        "data": {"num_samples": 2000},
        "model": {"hidden": 32, "depth": 2},
        "diffusion": {"timesteps": 200},
        "train": {
            "steps": 40,
            "batch_size": 128,
            "log_every": 20,
            "sample_every": 0,
            "checkpoint_every": 0,
            "warmup_steps": 0,
            "num_grid_samples": 4,
            "device": "cpu",
        },
        "sample": {"sampler": "dpm++2m", "steps": 6},
    }
    path = tmp_path_factory.mktemp("toy") / "run"
    train(load_config("toy2d-8gaussians", overrides=copy.deepcopy(over)), path, progress=False, log=None)
    return path


def test_tuned_grid_is_saved_and_used_by_run_sample(toy_run):
    run = Run.load(toy_run, device="cpu")
    record = tune_steps(run, 6, draws=64, heldout=64, rounds=2)
    path = tuned_path(toy_run, "dpm++2m", 6)
    assert record["path"] == str(path) and path.is_file()
    saved = json.loads(path.read_text())
    o = saved["objective"]
    assert o["tuned"] <= o["start"] and (saved["kept_start"] or o["heldout_tuned"] <= o["heldout_start"])
    ts, _ = load_tuned(toy_run, "dpm++2m", 6, 200)
    assert ts == saved["timesteps"]
    # the same search again gives the same grid (deterministic); --force is needed to replace it
    with pytest.raises(UserError, match="exists"):
        tune_steps(run, 6, draws=64, heldout=64, rounds=2)
    again = tune_steps(run, 6, draws=64, heldout=64, rounds=2, force=True)
    assert again["timesteps"] == saved["timesteps"] and again["objective"] == saved["objective"]

    got = run.sample(5, seed=3)  # the run's sampler at 6 calls: the tuned grid
    assert got.timesteps_file == str(path)
    gens = [torch.Generator().manual_seed(3 + i) for i in range(5)]
    direct = run.diffusion.sample(run.model, (5, 2), sampler="dpm++2m", timesteps=torch.tensor(ts), generator=gens)
    torch.testing.assert_close(got.x, direct)
    named = run.sample(5, seed=3, spacing="snr_root")  # a named spacing wins over the tuned grid
    assert named.timesteps_file is None and not torch.equal(named.x, got.x)
    assert run.sample(5, seed=3, steps=7).timesteps_file is None  # other K: no tuned grid
    assert run.sample(5, seed=3, sampler="ddim").timesteps_file is None  # other sampler: none either


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "unreadable"),
        ('{"format": "something else"}', "not a ddpmkit tuned-timesteps file"),
        (
            '{"format": "ddpmkit tuned timesteps", "sampler": "ddim", "steps": 4, "num_timesteps": 200, '
            '"timesteps": [199, 100, 50, 0]}',
            "not for unipc-bh1 at 4 calls",
        ),
        (
            '{"format": "ddpmkit tuned timesteps", "sampler": "unipc-bh1", "steps": 4, "num_timesteps": 200, '
            '"timesteps": [199, 100, 0]}',
            "list of 4 integers",
        ),
        (
            '{"format": "ddpmkit tuned timesteps", "sampler": "unipc-bh1", "steps": 4, "num_timesteps": 200, '
            '"timesteps": [199, 50, 100, 0]}',
            "strictly decreasing",
        ),
        (
            '{"format": "ddpmkit tuned timesteps", "sampler": "unipc-bh1", "steps": 4, "num_timesteps": 200, '
            '"timesteps": [250, 100, 50, 0]}',
            "strictly decreasing in [0, 199]",
        ),
        (
            '{"format": "ddpmkit tuned timesteps", "sampler": "unipc-bh1", "steps": 4, "num_timesteps": 200, '
            '"timesteps": [199, 100, 50.5, 0]}',
            "list of 4 integers",
        ),
    ],
)
def test_a_damaged_tuned_file_is_one_error_line(toy_run, tmp_path, capsys, text, words):
    path = tuned_path(toy_run, "unipc-bh1", 4)
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    try:
        with pytest.raises(UserError, match="tuned timesteps file"):
            Run.load(toy_run, device="cpu").sample(3, sampler="unipc-bh1", steps=4)
        capsys.readouterr()
        code = main(
            [
                "sample",
                str(toy_run),
                "--num",
                "3",
                "--sampler",
                "unipc-bh1",
                "--steps",
                "4",
                "--out",
                str(tmp_path / "s.npz"),
                "--no-progress",
            ]
        )
        assert_user_error(code, capsys.readouterr().err, str(path), words)
        assert not (tmp_path / "s.npz").exists()
    finally:
        path.unlink()


def test_a_damaged_tuned_file_through_the_console_entry_point(toy_run, tmp_path):
    path = tuned_path(toy_run, "dpm++2m", 3)
    path.parent.mkdir(exist_ok=True)
    path.write_text("[1, 2")
    try:
        code, err = run_cli("sample", toy_run, "--num", "3", "--steps", "3", "--out", tmp_path / "s.npz")
        assert_user_error(code, err, str(path), "unreadable")
    finally:
        path.unlink()


def test_tune_steps_command(toy_run, tmp_path, capsys):
    ckpt = next((toy_run / "checkpoints").iterdir())
    loose = tmp_path / "loose.pt"
    loose.write_bytes(ckpt.read_bytes())
    for args, words in (
        (["--steps", "4", "--sampler", "ddpm"], "deterministic sampler"),
        (["--steps", "1"], "tuned steps must be an integer in [2, 199]"),
        (["--steps", "4", "--rounds", "0"], "rounds"),
        (["--steps", "4", "--seed", "-1"], "seed"),
        (["--steps", "4", "--draws", "0"], "draws"),
    ):
        assert_user_error(main(["tune-steps", str(toy_run), *args]), capsys.readouterr().err, words)
    assert_user_error(main(["tune-steps", str(loose), "--steps", "4"]), capsys.readouterr().err, "run directory")
    assert (
        main(
            [
                "tune-steps",
                str(toy_run),
                "--steps",
                "4",
                "--sampler",
                "unipc-bh2",
                "--draws",
                "32",
                "--heldout",
                "32",
                "--rounds",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("tuned unipc-bh2 at 4 calls from ") and "unipc-bh2-4.json" in out
    assert (
        main(
            [
                "sample",
                str(toy_run),
                "--num",
                "4",
                "--sampler",
                "unipc-bh2",
                "--steps",
                "4",
                "--out",
                str(tmp_path / "s.npz"),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "tuned timesteps" in out and "unipc-bh2-4.json" in out
    tuned_path(toy_run, "unipc-bh2", 4).unlink()
