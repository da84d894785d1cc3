"""``ddpmkit distill``: a consistency model tuned by ECT from the session's tiny digits run is a run like any other
(samples in one or two calls with labels, ``info``, bit-for-bit resume), refuses what it cannot do in one line,
and its loaded consistency function keeps the boundary f(x, sigma_min) = x exactly."""

import json

import numpy as np
import pytest
import torch
import yaml

import ddpmkit
from ddpmkit import Run, UserError
from ddpmkit.runs.consistency_model import TWO_CALL_MID_SIGMA, noise_levels, run_consistency_function
from ddpmkit.runs.distill import DISTILL_PRESETS, MIN_STEPS, distill_config
from ddpmkit.train.checkpoint import read_checkpoint
from helpers import assert_user_error, distill_args, run_cli, run_cli_out

pytestmark = pytest.mark.usefixtures("one_thread")


def distill(teacher, out, *extra):
    return run_cli(*distill_args(teacher, out, *extra))


@pytest.fixture(scope="module")
def cm_run(tiny_run, tmp_path_factory):
    """A consistency model tuned 4 steps from the session's tiny digits run."""
    out = tmp_path_factory.mktemp("distill") / "cm"
    code, err = distill(tiny_run, out, "--steps", "4")
    assert code == 0, err
    return out


def test_distill_writes_a_run_whose_config_names_the_teacher_and_logs_stages(cm_run, tiny_run):
    cfg = yaml.safe_load((cm_run / "config.yaml").read_text())
    assert cfg["distill"]["method"] == "ect" and cfg["distill"]["teacher"].startswith(str(tiny_run.resolve()))
    assert (cfg["distill"]["teacher_step"], cfg["distill"]["teacher_images"]) == (4, 4 * 16)
    assert cfg["sample"]["guidance"] == 1.0 and cfg["model"]["num_classes"] == 10
    assert "distill" not in yaml.safe_load((tiny_run / "config.yaml").read_text())  # other runs' configs unchanged
    ckpt = read_checkpoint(cm_run / "checkpoints" / "step_00000004.pt")
    assert ckpt["config"] == cfg  # the section round-trips in checkpoints
    lines = [json.loads(line) for line in (cm_run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["stage"]) for r in lines] == [(2, 0), (4, 1)]
    assert lines[-1]["teacher_cost"] == pytest.approx(4 * 8 / (4 * 16))
    assert sorted(p.name for p in (cm_run / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]


@pytest.mark.parametrize("calls", [1, 2])
def test_sample_in_one_or_two_calls_keeps_labels(cm_run, tmp_path, calls):
    out = tmp_path / "s.npz"
    code, err = run_cli("sample", str(cm_run), "--steps", str(calls), "--num", "5", "--labels", "3", "--out", str(out))
    assert code == 0, err
    with np.load(out) as z:
        assert z["images"].shape == (5, 8, 8, 1) and z["labels"].tolist() == [3] * 5
    samples = Run.load(cm_run, device="cpu").sample(5, steps=calls, labels="3")
    assert (samples.sampler, samples.steps) == ("consistency", calls)


def test_info_describes_the_distillation(cm_run):
    code, out = run_cli_out("info", str(cm_run))
    assert code == 0 and "distill      ect from " in out and "(step 4)" in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["eval", "--metric", "bpd", "--num", "4"], ["bits/dim", "consistency model", "no likelihood bound"]),
        (["sample", "--sampler", "ddim", "--num", "2"], ["--sampler", "consistency model"]),
        (["sample", "--guidance", "2", "--labels", "1", "--num", "2"], ["guidance", "consistency model"]),
        (["tune-steps", "--steps", "3"], ["tune-steps", "consistency model", "--steps 1"]),
    ],
)
def test_what_does_not_apply_is_refused_in_one_line(cm_run, tmp_path, args, words):
    extra = ["--out", str(tmp_path / "s.npz")] if args[0] == "sample" else []
    assert_user_error(*run_cli(args[0], str(cm_run), *args[1:], *extra), *words)


def test_edit_in_its_own_calls(cm_run, tmp_path):
    from ddpmkit.images import save_npz
    from ddpmkit.runs.editing import edit

    images = (np.arange(2 * 64).reshape(2, 8, 8, 1) * 2).astype(np.uint8)
    save_npz(tmp_path / "in.npz", images)
    out = tmp_path / "out.npz"
    args = ["--image", str(tmp_path / "in.npz"), "--strength", "0.5", "--steps", "1", "--labels", "3"]
    code, text = run_cli_out("edit", str(cm_run), *args, "--out", str(out))
    assert code == 0 and "2 edits (1 network calls each)" in text
    with np.load(out) as z:
        assert z["images"].shape == (2, 8, 8, 1)
    run = Run.load(cm_run, device="cpu")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert edit(run, x, 0.5, labels="3", steps=2).calls == 2
    unchanged = edit(run, x, 0.0, labels="3")
    assert unchanged.calls == 0 and torch.equal(unchanged.x, x)
    assert_user_error(
        *run_cli("edit", str(cm_run), *args, "--sampler", "ddim", "--out", str(tmp_path / "b.npz")),
        "--sampler",
        "consistency model",
    )


def test_interpolate_between_seeds_in_its_own_calls(cm_run, tmp_path):
    from ddpmkit.runs.editing import interpolate

    run = Run.load(cm_run, device="cpu")
    strip = interpolate(run, seeds=(0, 1), frames=4, steps=1, labels="3")
    assert strip.x.shape == (4, 1, 8, 8) and strip.calls == 1
    ends = [run.sample(1, steps=1, labels="3", seed=s).x for s in (0, 1)]  # slerp's ends are the seeds' noises
    torch.testing.assert_close(strip.x[:1], ends[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(strip.x[3:], ends[1], atol=1e-5, rtol=0)
    code, text = run_cli_out(
        "interpolate", str(cm_run), "--seeds", "0,1", "--frames", "3", "--labels", "3", "--out", str(tmp_path / "s.png")
    )
    assert code == 0 and "3 frames (consistency, 2 steps)" in text
    from ddpmkit.images import save_png

    pair = [str(save_png(tmp_path / f"{n}.png", np.full((8, 8, 1), 40 * n, np.uint8))) for n in (1, 2)]
    refused = run_cli("interpolate", str(cm_run), "--images", ",".join(pair), "--out", str(tmp_path / "t.png"))
    assert_user_error(*refused, "consistency model", "--seeds")


def test_report_and_export_a_consistency_model(cm_run, tmp_path):
    code, err = run_cli("report", str(cm_run), "--out", str(tmp_path / "r.html"))
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    assert "a few jumps, not a trajectory" in html and "1, 2, 4 network calls" in html
    code, err = run_cli("export", str(cm_run), "--format", "safetensors", "--out", str(tmp_path / "x"))
    assert code == 0, err
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "x" / "model.safetensors")
    ema = Run.load(cm_run, device="cpu").model.state_dict()
    assert all(torch.equal(weights[k], ema[k].contiguous()) for k in weights) and len(weights) == len(ema)


def test_eval_scores_a_consistency_models_samples(cm_run, tmp_path):
    from helpers import StandIn

    net = tmp_path / "standin.pt"
    torch.jit.save(torch.jit.script(StandIn()), str(net))
    args = ["--metric", "fid", "kid", "--num", "20", "--steps", "1", "--inception", str(net), "--no-progress"]
    code, err = run_cli("eval", str(cm_run), *args, "--out", str(tmp_path / "r.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert np.isfinite(result["fid"]) and result["fid"] > 0 and np.isfinite(result["kid"])


def test_the_loaded_consistency_function_keeps_the_boundary_exactly(cm_run):
    run = Run.load(cm_run, device="cpu")
    f = run_consistency_function(run.config, run.model, run.diffusion)
    levels = noise_levels(run.diffusion)
    x = 0.5 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        assert torch.equal(f(x, torch.full((4,), levels.sigma_min, dtype=torch.float64), y), x)
        away = f(x, torch.full((4,), 4 * levels.sigma_min, dtype=torch.float64), y)
    assert float((away - x).abs().max()) > 1e-3  # the network acts above sigma_min


def test_resume_goes_on_bit_for_bit(tiny_run, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert distill(tiny_run, whole, "--steps", "4")[0] == 0
    assert distill(tiny_run, split, "--steps", "2")[0] == 0
    code, err = distill(tiny_run, split, "--steps", "4", "--resume")
    assert code == 0, err
    a, b = (read_checkpoint(run / "checkpoints" / "step_00000004.pt") for run in (whole, split))
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert a["extra"]["ect_steps"] == b["extra"]["ect_steps"] == 4


def test_a_short_ect_run_on_toy2d_beats_the_teachers_one_call_ddim(tmp_path):
    """Teacher (v-prediction MLP) and tuning through the CLI; one-call samples scored by sliced Wasserstein."""
    from ddpmkit.data.toy2d import sample_toy2d
    from ddpmkit.oracles import sliced_wasserstein

    teacher, cm = tmp_path / "teacher", tmp_path / "cm"
    small = ["--set", "model.hidden=64", "--set", "model.depth=2", "--set", "diffusion.prediction=v"]
    quiet = ["--set", "train.sample_every=0", "--set", "train.log_every=100", "--no-progress"]
    code, err = run_cli(
        "train", "--preset", "toy2d-8gaussians", "--out", str(teacher), "--steps", "800", *small, *quiet
    )
    assert code == 0, err
    code, err = run_cli("distill", str(teacher), "--out", str(cm), "--steps", "800", *quiet)
    assert code == 0, err
    ref = sample_toy2d("8gaussians", 4000, torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(ref, sample_toy2d("8gaussians", 4000, torch.Generator().manual_seed(2)))
    ddim = Run.load(teacher, device="cpu").sample(4000, sampler="ddim", steps=1, seed=10).x
    one = Run.load(cm, device="cpu").sample(4000, steps=1, seed=10).x
    two = Run.load(cm, device="cpu").sample(4000, steps=2, seed=10).x
    sw = [sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0)) for x in (ddim, one, two)]
    # measured: teacher's one-call DDIM 0.30 (its 50-call DDIM 0.25), tuned 0.12 (one call), 0.11 (two); floor 0.06
    assert sw[1] < 0.5 * sw[0] and sw[2] < 0.5 * sw[0], (sw, floor)


def test_the_intermediate_levels_are_settable_and_checked(cm_run):
    from ddpmkit.runs.consistency_model import run_sampling_sigmas

    levels = noise_levels(Run.load(cm_run, device="cpu").diffusion)
    assert run_sampling_sigmas(levels, 2, [0.3]).tolist() == [levels.sigma_max, 0.3]
    assert run_sampling_sigmas(levels, 3, [0.3]).shape == (3,)  # another count of calls: the default grid
    with pytest.raises(UserError, match="intermediate levels"):
        run_sampling_sigmas(levels, 2, [5.0])  # above sigma_max
    long = noise_levels(ddpmkit.GaussianDiffusion(ddpmkit.linear_beta_schedule(1000)))
    assert run_sampling_sigmas(long, 2).tolist() == [long.sigma_max, TWO_CALL_MID_SIGMA]  # the measured default
    short = run_sampling_sigmas(levels, 2)  # a short schedule below it: the middle of the Karras grid
    assert levels.sigma_min < float(short[1]) < levels.sigma_max < TWO_CALL_MID_SIGMA


def test_the_tuning_is_a_fifth_of_the_teachers_images_by_default(tiny_run):
    cfg = distill_config(tiny_run)
    teacher = 4 * 16  # the tiny run: 4 steps of 16
    assert cfg.train.steps == max(MIN_STEPS, round(DISTILL_PRESETS["digits"]["share"] * teacher / 128)) == MIN_STEPS
    assert distill_config(tiny_run, steps=7).train.steps == 7
