"""Checkpoint round trip, atomic writes, every kind of bad file, run-directory lookup, metrics log."""

from __future__ import annotations

import builtins
import dataclasses
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ddpmkit.ema import EMA
from ddpmkit.errors import UserError
from ddpmkit.runs.rundir import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
)
from ddpmkit.train.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from ddpmkit.train.metrics import MetricsLogger, read_metrics, truncate_metrics


@dataclasses.dataclass
class Cfg:
    lr: float = 1e-3
    data: Path = Path("/data/x")
    sizes: tuple = (1, 2)


def trained_state(seed: int = 0) -> tuple[nn.Module, EMA, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.GroupNorm(1, 5), nn.Linear(5, 1))
    ema = EMA(model, decay=0.9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(1, 3):
        loss = model(torch.randn(4, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model, step)
    return model, ema, opt


def save_small(path: Path, step: int = 2) -> Path:
    model, ema, opt = trained_state()
    return save_checkpoint(path, step=step, config={"lr": 0.01}, model=model, ema=ema, optimizer=opt, rng=None)


def assert_tree_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_tree_equal(x, y)
    else:
        assert a == b


def test_round_trip(tmp_path: Path) -> None:
    model, ema, opt = trained_state()
    path = checkpoint_path(tmp_path / "run", 2)
    assert path == tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    out = save_checkpoint(
        path,
        step=2,
        config=Cfg(),
        model=model,
        ema=ema,
        optimizer=opt,
        rng={"data": torch.tensor([7, 8])},
        extra={"note": "hi", "best": 0.5},
    )
    assert out == path and path.is_file()
    expected_next = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(10)  # move every generator on
    random.random()
    np.random.rand(4)

    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "ddpmkit-checkpoint" and ckpt["version"] == 2 and ckpt["step"] == 2
    assert ckpt["config"] == {"lr": 1e-3, "data": "/data/x", "sizes": (1, 2)}
    assert ckpt["extra"] == {"note": "hi", "best": 0.5}
    assert_tree_equal(ckpt["model"], model.state_dict())
    assert_tree_equal(ckpt["ema"], ema.model.state_dict())
    assert_tree_equal(ckpt["optimizer"], opt.state_dict())
    assert torch.equal(ckpt["rng"]["data"], torch.tensor([7, 8]))

    # the states load into fresh objects, which then behave identically
    model2, ema2, opt2 = trained_state(seed=9)
    model2.load_state_dict(ckpt["model"])
    ema2.load_state_dict(ckpt["ema"])
    opt2.load_state_dict(ckpt["optimizer"])
    assert_tree_equal(opt2.state_dict(), opt.state_dict())

    restore_rng_state(ckpt["rng"])
    got_next = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got_next[0], expected_next[0])
    assert got_next[1:] == expected_next[1:]


def test_loads_with_plain_torch_weights_only(tmp_path: Path) -> None:
    path = save_small(tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "ddpmkit-checkpoint"


def test_non_plain_config_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="config.obj"):
        save_checkpoint(
            tmp_path / "c.pt",
            step=0,
            config={"obj": object()},
            model=nn.Linear(1, 1),
            ema=None,
            optimizer=None,
            rng=None,
        )
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_small(tmp_path / "ckpts" / "a.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.pt"]
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(UserError, match="cannot write .*a.pt.*: disk full"):
        save_small(path, step=3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.pt"]
    assert path.read_bytes() == before  # the old checkpoint is untouched


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run directory or checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_directory_without_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no checkpoints"):
        load_checkpoint(tmp_path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "rand.pt"
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(UserError, match=r"not a readable checkpoint \(truncated or corrupt\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.0, 0.99])
def test_truncated_checkpoint(tmp_path: Path, keep: float) -> None:
    good = save_small(tmp_path / "good.pt")
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError, match="truncated or corrupt") as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_plain_torch_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(UserError, match="not a ddpmkit checkpoint"):
        load_checkpoint(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match="not a ddpmkit checkpoint"):
        load_checkpoint(path)


class _OpenMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class _SystemMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("payload", [_OpenMarker, _SystemMarker])
def test_malicious_pickle_never_runs(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"format": "ddpmkit-checkpoint", "version": 1, "x": payload(marker)}, path)
    with pytest.raises(UserError, match="refused to load unsafe content") as info:
        load_checkpoint(path)
    assert "not a ddpmkit checkpoint" in str(info.value)
    assert not marker.exists()
    # the same payload as a raw (non-zip) pickle file
    raw = tmp_path / "evil_raw.pt"
    raw.write_bytes(pickle.dumps(payload(marker), protocol=2))
    with pytest.raises(UserError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_wrong_version(tmp_path: Path) -> None:
    path = save_small(tmp_path / "c.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["version"] = 99
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="version 99"):
        load_checkpoint(path)


def test_latest_and_resolve(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert latest_checkpoint(run) is None
    for step in (5, 100, 20):
        save_checkpoint(
            checkpoint_path(run, step),
            step=step,
            config={},
            model=nn.Linear(1, 1),
            ema=None,
            optimizer=None,
            rng=None,
        )
    (run / "checkpoints" / "step_00000999.pt.tmp").write_bytes(b"")  # not a checkpoint name
    (run / "checkpoints" / "notes.txt").write_text("x")
    assert latest_checkpoint(run) == checkpoint_path(run, 100)
    assert resolve_checkpoint(run) == checkpoint_path(run, 100)
    assert resolve_checkpoint(str(run / "checkpoints")) == checkpoint_path(run, 100)
    assert resolve_checkpoint(checkpoint_path(run, 5)) == checkpoint_path(run, 5)
    assert load_checkpoint(run)["step"] == 100
    with pytest.raises(UserError, match="no such run directory or checkpoint"):
        resolve_checkpoint(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="has no checkpoints"):
        resolve_checkpoint(empty)

    removed = prune_checkpoints(run, keep=2)
    assert removed == [checkpoint_path(run, 5)]
    assert not checkpoint_path(run, 5).exists() and checkpoint_path(run, 20).exists()
    with pytest.raises(UserError):
        prune_checkpoints(run, keep=0)


def test_rng_capture_restore() -> None:
    state = capture_rng_state()
    a = torch.randn(5)
    restore_rng_state(state)
    assert torch.equal(torch.randn(5), a)
    with pytest.raises(UserError, match="RNG state"):
        restore_rng_state({"torch": "garbage"})


def test_cuda_rng_is_kept_for_this_process_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the current GPU's state is saved and restored, and only by a process that uses its GPU
    (touching the other GPUs would open a CUDA context on each of them)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("read every GPU's state"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(state.tolist()))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # a CPU run on a GPU machine
    assert "cuda_current" not in capture_rng_state()
    restore_rng_state({"cuda_current": torch.tensor([1], dtype=torch.uint8)})
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert capture_rng_state()["cuda_current"].tolist() == [7]
    restore_rng_state({"cuda_current": torch.tensor([1], dtype=torch.uint8)})
    restore_rng_state({"cuda": [torch.tensor([2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)]})
    assert calls == [[1], [2]]  # an older checkpoint's list: the saving process's own GPU comes first


def test_metrics_log(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "metrics.jsonl"
    logger = MetricsLogger(path)
    logger.log({"step": 1, "loss": torch.tensor(0.25), "lr": np.float32(0.5), "bad": float("nan")})
    # flushed line by line: readable before close
    assert read_metrics(path) == [{"step": 1, "loss": 0.25, "lr": 0.5, "bad": None}]
    logger.log({"step": 2, "loss": 0.125})
    logger.close()
    with MetricsLogger(path) as again:  # appends
        again.log({"step": 3, "loss": 1})
    lines = path.read_text().splitlines()
    assert lines[1] == '{"step": 2, "loss": 0.125}'
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]

    with open(path, "a") as f:
        f.write('{"step": 4, "lo')  # a crash mid-line
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert truncate_metrics(path, 1) == 2
    assert read_metrics(path) == [{"step": 1, "loss": 0.25, "lr": 0.5, "bad": None}]

    off = tmp_path / "off.jsonl"
    MetricsLogger(off, enabled=False).log({"step": 1})
    MetricsLogger(None).log({"step": 1})
    assert not off.exists()
    with pytest.raises(UserError, match="metrics file not found"):
        read_metrics(off)
    off.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(UserError, match="line 2"):
        read_metrics(off)
