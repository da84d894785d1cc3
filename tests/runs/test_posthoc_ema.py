"""Power EMA in training and `ddpmkit ema`: snapshots at their interval with their labels, a bit-for-bit resume,
stored widths rebuilt exactly, another width as a run trained with it directly would have it, the sweep's table,
and the one-line refusals."""

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ddpmkit.config import config_yaml, load_config
from ddpmkit.errors import UserError
from ddpmkit.eval.quality import reference_stats
from ddpmkit.power_ema import gamma_from_sigma_rel
from ddpmkit.runs import Run
from ddpmkit.runs.posthoc_ema import sweep
from ddpmkit.runs.report import build_report
from helpers import assert_user_error, run_cli, run_cli_out, run_cli_streams

STEPS, EVERY = 8, 2  # 4 snapshots of 2 widths: 8 profiles to fit a third width from
POWER = {"ema_kind": "power", "ema_sigma_rels": [0.05, 0.10], "ema_snapshot_every": EVERY}


def _train(root, name, train, *extra):
    """A tiny digits run (conftest's TINY_DIGITS) with ``train`` on top; its directory."""
    from conftest import TINY_DIGITS

    cfg = copy.deepcopy(TINY_DIGITS)
    cfg["train"].update({"steps": STEPS, "checkpoint_every": 4, "keep_checkpoints": 0, **train})
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    out = root / name
    args = ["train", "--preset", "digits", "--config", root / f"{name}.yaml", "--out", out, "--no-progress", *extra]
    code, err = run_cli(*args)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def power_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("power"), "run", POWER)


def _ckpt(run, step=STEPS):
    return torch.load(run / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)


def _close(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol)


def _samples(run_dir, state=None):
    """Two samples of the run (5 DDIM calls, seed 0), from ``state`` when given."""
    run = Run.load(run_dir, device="cpu")
    if state is not None:
        run.model.load_state_dict(state)
    return run.sample(2, sampler="ddim", steps=5, labels=[3, 7], seed=0, precision="fp32").x


def test_power_keys_are_written_only_where_set():
    text = config_yaml(load_config("mnist", None, None))
    assert "ema_kind" not in text and "ema_sigma_rels" not in text and "ema_snapshot_every" not in text
    train = yaml.safe_load(config_yaml(load_config("digits", None, None)))["train"]  # the preset chose power
    assert (train["ema_kind"], train["ema_snapshot_every"]) == ("power", 500) and "ema_sigma_rels" not in train
    assert load_config("digits", None, None).train.ema_sigma_rels == (0.05, 0.10)  # the default widths


def test_snapshots_at_the_interval_labelled_by_their_last_update(power_run):
    names = sorted(p.name for p in (power_run / "ema_snapshots").iterdir())
    assert names == [f"step_{s:08d}.pt" for s in range(EVERY, STEPS + 1, EVERY)]
    ckpt = _ckpt(power_run)
    state = ckpt["extra"]["power_ema"]
    assert state["step"] == STEPS and state["sigma_rels"] == [0.05, 0.10]
    _close(ckpt["ema"], state["averages"][0], rtol=0, atol=0)  # the first width is the one sampled
    for s in range(EVERY, STEPS + 1, EVERY):
        snap = torch.load(power_run / "ema_snapshots" / f"step_{s:08d}.pt", weights_only=True)
        assert snap["step"] == s and snap["sigma_rels"] == [0.05, 0.10]
        assert snap["gammas"] == [gamma_from_sigma_rel(0.05), gamma_from_sigma_rel(0.10)]
    for last, now in zip(snap["averages"], state["averages"]):
        _close(last, now, rtol=0, atol=0)
    assert "ema_kind: power" in (power_run / "config.yaml").read_text()


def test_resume_is_bit_for_bit(power_run, tmp_path):
    half = Path(shutil.copytree(power_run, tmp_path / "half"))
    (half / "checkpoints" / f"step_{STEPS:08d}.pt").unlink()  # back to step 4; later snapshots are rewritten
    code, err = run_cli("train", "--out", half, "--resume", "--no-progress")
    assert code == 0, err
    a, b = _ckpt(half), _ckpt(power_run)
    for part in ("model", "ema"):
        _close(a[part], b[part], rtol=0, atol=0)
    for x, y in zip(a["extra"]["power_ema"]["averages"], b["extra"]["power_ema"]["averages"]):
        _close(x, y, rtol=0, atol=0)
    for s in range(EVERY, STEPS + 1, EVERY):
        x, y = (torch.load(r / "ema_snapshots" / f"step_{s:08d}.pt", weights_only=True) for r in (half, power_run))
        assert x["step"] == y["step"] == s
        for u, v in zip(x["averages"], y["averages"]):
            _close(u, v, rtol=0, atol=0)


def test_a_stored_width_is_rebuilt_exactly(power_run, tmp_path):
    out = tmp_path / "w10"
    code, out_text = run_cli_out("ema", power_run, "--sigma-rel", "0.10", "--out", out)
    assert code == 0 and "wrote" in out_text
    stored = _ckpt(power_run)["extra"]["power_ema"]["averages"][1]
    _close(_ckpt(out)["ema"], stored, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(_samples(out), _samples(power_run, stored), rtol=1e-5, atol=1e-5)
    code, err = run_cli("ema", power_run, "--sigma-rel", "0.10", "--out", out)  # no overwrite without --force
    assert_user_error(code, err, "--force")
    code, _ = run_cli_out("ema", power_run, "--sigma-rel", "0.05", "--out", out, "--force")
    assert code == 0 and [c.name for c in (out / "checkpoints").iterdir()] == [_ckpt_name(power_run)]
    assert _ckpt(out)["extra"]["posthoc_ema"]["sigma_rel"] == pytest.approx(0.05)


def _ckpt_name(run):
    return sorted((Path(run) / "checkpoints").iterdir())[-1].name


def test_an_output_folder_with_other_files_is_not_written_into(power_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.png").write_bytes(b"mine")
    code, err = run_cli("ema", power_run, "--sigma-rel", "0.07", "--out", photos)
    assert_user_error(code, err, "already exists", "--force")
    assert [f.name for f in photos.iterdir()] == ["cat.png"]


def test_keep_best_refuses_its_output_before_the_sweep(power_run, tmp_path, monkeypatch):
    import ddpmkit.runs.posthoc_ema as posthoc

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    monkeypatch.setattr(posthoc, "sweep", lambda *a, **k: pytest.fail("the sweep ran before the output was checked"))
    code, out, err = run_cli_streams("ema", power_run, "--sweep", "0.05:0.1:2", "--keep-best", "--out", taken)
    assert_user_error(code, err, "already exists")
    assert out == "" and [f.name for f in taken.iterdir()] == ["notes.txt"]


def test_rebuilt_width_samples_as_a_run_trained_with_it(power_run, tmp_path):
    # the live weights do not depend on the EMA, so a run averaging only width 0.07 trains the same weights
    direct = _train(tmp_path, "direct", {"ema_kind": "power", "ema_sigma_rels": [0.07]})
    _close(_ckpt(direct)["model"], _ckpt(power_run)["model"], rtol=0, atol=0)
    code, _ = run_cli_out("ema", power_run, "--sigma-rel", "0.07", "--out", tmp_path / "w07")
    assert code == 0
    rebuilt, truth = _ckpt(tmp_path / "w07")["ema"], _ckpt(direct)["ema"]
    # tolerance: the rebuilt average is at least 4 times closer to the direct one than either stored width is
    # (measured, largest difference of any weight: 0.13 of the nearer stored width's, 2e-6 in absolute terms)
    stored = _ckpt(power_run)["extra"]["power_ema"]["averages"]
    nearest = min(max((truth[k] - s[k]).abs().max() for k in truth) for s in stored)
    error = max((rebuilt[k] - truth[k]).abs().max() for k in truth)
    assert error <= 0.25 * nearest, (error, nearest)
    torch.testing.assert_close(_samples(tmp_path / "w07"), _samples(direct), rtol=0, atol=0.02)


def test_sweep_prints_and_keeps_its_table(power_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(power_run, run)
    code, out = run_cli_out("ema", run, "--sweep", "0.05:0.10:2", "--metric", "bpd", "--num", 4, "--no-progress")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0].split() == ["sigma_rel", "bpd", "score", "fit", "error"]
    assert [line.split()[0] for line in lines[1:3]] == ["0.0500", "0.1000"] and "best sigma_rel" in lines[3]
    table = json.loads((run / "ema_snapshots" / "sweep-bpd.json").read_text())
    assert [r["sigma_rel"] for r in table["rows"]] == [0.05, 0.10] and table["ranked_by"] == "bpd"
    assert table["best_sigma_rel"] == min(table["rows"], key=lambda r: r["bpd"])["sigma_rel"]
    assert all(r["fit_error"] < 1e-6 for r in table["rows"])  # stored widths, read at the last snapshot


def _sweep_part(html, metric):
    """The report's post-hoc EMA part for ``metric`` (empty when the section or the metric is missing)."""
    start = html.find('<section id="posthoc-ema">')
    section = "" if start < 0 else html[start : html.index("</section>", start)]
    at = section.find(f"<h3>{metric}</h3>")
    return "" if at < 0 else section[at:].split("<h3>")[1]


def test_report_draws_each_sweep_with_its_best_width(power_run, tmp_path):
    run = Path(shutil.copytree(power_run, tmp_path / "run"))
    assert '<section id="posthoc-ema">' not in build_report(run, trajectory=False, device="cpu")  # no sweep yet
    bpd = sweep(run, [0.05, 0.075, 0.10], "bpd", num=4, device="cpu")
    # a table of the same layout whose best width is the highest score, inside the range
    scores = [(0.05, 0.5), (0.075, 0.9), (0.10, 0.7)]
    digits = {**bpd, "metric": "digits", "ranked_by": "accuracy", "higher_is_better": True, "best_sigma_rel": 0.075}
    digits["rows"] = [{"sigma_rel": s, "accuracy": a, "fit_error": 0.0} for s, a in scores]
    (run / "ema_snapshots" / "sweep-digits.json").write_text(json.dumps(digits))
    html = build_report(run, trajectory=False, device="cpu")
    for table in (bpd, digits):
        key, part = table["ranked_by"], _sweep_part(html, table["metric"])
        best = (max if table["higher_is_better"] else min)(table["rows"], key=lambda r: r[key])["sigma_rel"]
        assert re.findall(r"<tr><td>([0-9.]+)</td>(?:<td>[^<]*</td>){2}<td>best</td></tr>", part) == [f"{best:.4f}"]
        assert re.findall(r'<circle class="point"[^>]*><title>([^<]*)</title>', part) == [f"best sigma_rel {best:.4f}"]
        assert f"--sigma-rel {best:g}</code>" in part and ">sigma_rel</text>" in part and ">0.08</text>" in part


@pytest.mark.parametrize(
    "args, words",
    [
        (["--sigma-rel", "0.5"], ["sigma_rel", "0.5"]),
        (["--sigma-rel", "0"], ["sigma_rel"]),
        (["--sweep", "0.02:0.25"], ["--sweep must be LO:HI:N"]),
        (["--sweep", "0.2:0.1:3"], ["--sweep must be LO:HI:N"]),
        (["--sweep", "a:b:c"], ["--sweep must be LO:HI:N"]),
        (["--sweep", "0.02:0.4:3"], ["sigma_rel", "0.4"]),
        (["--sigma-rel", "0.07", "--keep-best"], ["--keep-best"]),
        (["--sweep", "0.05:0.1:2", "--num", "0"], ["--num", "positive integer", "0"]),
    ],
)
def test_bad_inputs_one_line(power_run, tmp_path, args, words):
    code, out, err = run_cli_streams("ema", power_run, *args, "--out", tmp_path / "x")
    assert_user_error(code, err, *words)
    assert out == "" and not (tmp_path / "x").exists()


def test_sweep_refuses_no_samples_before_scoring(power_run):
    with pytest.raises(UserError, match="--num must be a positive integer, got 0"):
        sweep(power_run, [0.05], "digits", num=0)
    assert not (Path(power_run) / "ema_snapshots" / "sweep-digits.json").exists()


def test_a_run_without_snapshots_is_refused(tmp_path):
    run = _train(tmp_path, "fixed", {"steps": 2})
    code, err = run_cli("ema", run, "--sigma-rel", "0.07", "--out", tmp_path / "x")
    assert_user_error(code, err, "no power EMA snapshots")


def test_fid_sweep_reads_its_reference_once_and_scores_as_eval_does(power_run, tmp_path, monkeypatch):
    import ddpmkit.runs.posthoc_ema as posthoc
    from ddpmkit.runs.quality import evaluate_quality
    from helpers import StandIn

    net = tmp_path / "standin.pt"
    torch.jit.save(torch.jit.script(StandIn()), str(net))
    run = Path(shutil.copytree(power_run, tmp_path / "run"))
    computed = []
    monkeypatch.setattr(posthoc, "reference_stats", lambda *a, **k: computed.append(1) or reference_stats(*a, **k))
    args = ["--sweep", "0.05:0.10:2", "--metric", "fid", "--num", 8, "--steps", 2, "--inception", net]
    code, out = run_cli_out("ema", run, *args, "--no-progress")
    assert code == 0, out
    table = json.loads((run / "ema_snapshots" / "sweep-fid.json").read_text())
    assert computed == [1] and table["ref"] == "test" and table["steps"] == 2  # one reference for both widths
    direct = Run.load(run, device="cpu")  # its EMA is the first stored width, 0.05
    found = [
        evaluate_quality(
            direct, ["fid"], "test", num=8, sample_options={"seed": 0, "steps": k}, network=str(net), allow_unknown=True
        )["fid"]
        for k in (2, 3)
    ]
    assert table["rows"][0]["fid"] == pytest.approx(found[0], rel=1e-6)
    assert table["rows"][0]["fid"] != pytest.approx(found[1], rel=1e-3)  # the sweep drew its samples in 2 calls


def test_an_ema_decay_the_power_ema_would_ignore_is_refused(tmp_path, tiny_config):
    out = tmp_path / "r"
    code, err = run_cli("train", "--preset", "digits", "--set", "train.ema_decay=0.9995", "--out", out)
    assert_user_error(code, err, "train.ema_decay", "power EMA", "train.ema_kind=fixed")
    assert not out.exists()  # refused before anything is written
    tiny = ["--config", tiny_config, "--no-progress"]  # a fixed EMA: the same assignment is used, and accepted
    code, err = run_cli("train", "--preset", "digits", *tiny, "--set", "train.ema_decay=0.6", "--out", out)
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["ema_decay"] == 0.6


def test_an_ema_decay_in_a_config_file_is_refused_unless_a_dump_repeats_it(tmp_path, monkeypatch):
    import ddpmkit.runs.training as training

    trained = []
    monkeypatch.setattr(training, "train", lambda cfg, out, **_: trained.append(cfg) or {"step": 0})
    mine = tmp_path / "mine.yaml"
    mine.write_text("train: {ema_start: 100, ema_decay: 0.995}\n")
    code, err = run_cli("train", "--preset", "digits", "--config", mine, "--out", tmp_path / "r")
    assert_user_error(code, err, "train.ema_decay in", "mine.yaml", "power EMA", "train.ema_kind=fixed")
    assert not trained
    code, dumped = run_cli_out("config", "--preset", "digits", "--set", "train.steps=20")
    (tmp_path / "dump.yaml").write_text(dumped)  # the resolved config, ema_decay and ema_start included
    assert "ema_decay" in dumped and "ema_kind: power" in dumped
    for args in (["--config", tmp_path / "dump.yaml"], ["--preset", "digits", "--config", tmp_path / "dump.yaml"]):
        code, err = run_cli("train", *args, "--out", tmp_path / "r")
        assert code == 0, err
    switched = ["--set", "train.ema_kind=power"]  # the power EMA chosen on the command line: the decay is moot
    code, err = run_cli("train", "--preset", "digits", "--config", mine, *switched, "--out", tmp_path / "r")
    assert code == 0, err
    assert [cfg.train.ema_kind for cfg in trained] == ["power", "power", "power"]


def test_a_power_ema_teacher_is_tuned_with_the_tunings_fixed_ema(power_run):
    from ddpmkit.runs.distill import distill_config

    train = distill_config(power_run).train
    assert (train.ema_kind, train.ema_snapshot_every, train.ema_decay) == ("fixed", 0, 0.995)  # the digits tuning's
