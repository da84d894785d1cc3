"""Distributed helpers: single-process no-ops, and a real 2-process Gloo job on CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ddpmkit.errors import UserError
from ddpmkit.train.distributed import (
    DistInfo,
    all_gather_cat,
    all_reduce_mean_,
    barrier,
    broadcast_object,
    device_for,
    exit_process,
    init_distributed,
    per_rank_batch_size,
    wrap_ddp,
)

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_env(clean_env: pytest.MonkeyPatch) -> None:
    info = init_distributed("cpu")
    assert info == DistInfo(rank=0, local_rank=0, world_size=1)
    assert info.is_main and not info.enabled
    assert not dist.is_initialized()
    clean_env.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") == DistInfo()
    assert not dist.is_initialized()


def test_single_process_helpers_are_no_ops() -> None:
    info = DistInfo()
    t = torch.tensor([3.0, 5.0])
    assert all_reduce_mean_(t, info) is t and t.tolist() == [3.0, 5.0]
    obj = {"x": 1}
    assert broadcast_object(obj, info) is obj
    assert all_gather_cat(t, info) is t
    barrier(info)
    net = nn.Linear(2, 2)
    assert wrap_ddp(net, info, torch.device("cpu")) is net
    assert device_for(info, "cpu") == torch.device("cpu")
    assert per_rank_batch_size(12, DistInfo(rank=1, local_rank=1, world_size=4)) == 3
    with pytest.raises(UserError, match="does not divide"):
        per_rank_batch_size(10, DistInfo(rank=0, local_rank=0, world_size=4))
    assert not DistInfo(rank=2, local_rank=0, world_size=3).is_main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answers")
def test_device_for_without_cuda() -> None:
    assert device_for(DistInfo(), "auto") == torch.device("cpu")
    with pytest.raises(UserError, match="CUDA is not available"):
        device_for(DistInfo(), "cuda")
    with pytest.raises(UserError, match="unknown device .tpu.; choose one of .auto., .cpu., .cuda."):
        device_for(DistInfo(), "tpu")  # type: ignore[arg-type]


def test_bad_environment(clean_env: pytest.MonkeyPatch) -> None:
    # each variable set in turn, on top of the ones before, brings the next complaint
    for name, value, message in [
        ("WORLD_SIZE", "two", "WORLD_SIZE must be an integer"),
        ("WORLD_SIZE", "2", "RANK is not set"),
        ("RANK", "0", "MASTER_ADDR is not set"),
        ("RANK", "5", "do not fit"),
    ]:
        clean_env.setenv(name, value)
        with pytest.raises(UserError, match=message):
            init_distributed()
    assert not dist.is_initialized()


def test_exit_process_skips_interpreter_shutdown_only_in_a_torchrun_worker(clean_env, monkeypatch):
    left = []
    monkeypatch.setattr(os, "_exit", lambda code: left.append(code))
    for code in (0, 2):
        with pytest.raises(SystemExit) as e:
            exit_process(code)
        assert e.value.code == code
    assert left == []
    clean_env.setenv("WORLD_SIZE", "two")  # a broken environment: a plain exit, not a traceback
    with pytest.raises(SystemExit):
        exit_process(2)
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "1")
    exit_process(3)
    assert left == [3]


WORKER = r"""
import json, sys
import torch
from torch import nn
from ddpmkit.train import distributed as D

out = sys.argv[1]
info = D.init_distributed("cpu")
torch.manual_seed(100 + info.rank)  # different initial weights on each rank
model = nn.Linear(3, 2)
ddp = D.wrap_ddp(model, info, D.device_for(info, "cpu"))
gen = torch.Generator().manual_seed(10 + info.rank)  # this rank's half of the global batch
x, y = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
loss = (ddp(x) - y).pow(2).mean()
loss.backward()
opt.step()
mean = D.all_reduce_mean_(torch.tensor([float(info.rank + 1), 10.0 * info.rank]), info)
gathered = D.all_gather_cat(torch.tensor([[info.rank, 1], [info.rank, 2]]), info)
obj = D.broadcast_object({"from": info.rank, "list": [info.rank] * 3}, info)
D.barrier(info)
with open(out, "w") as f:
    json.dump({
        "info": [info.rank, info.local_rank, info.world_size, info.is_main, info.enabled],
        "mean": mean.tolist(), "gathered": gathered.tolist(), "obj": obj, "ddp": type(ddp).__name__,
        "weight": model.weight.tolist(), "bias": model.bias.tolist(),
    }, f)
D.cleanup_distributed()
D.exit_process(0)  # as the ddpmkit command ends a torchrun worker
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_step() -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the whole global batch (8 rows), from rank 0's initial weights."""
    torch.manual_seed(100)
    model = nn.Linear(3, 2)
    xs, ys = [], []
    for rank in (0, 1):
        gen = torch.Generator().manual_seed(10 + rank)
        xs.append(torch.randn(4, 3, generator=gen))
        ys.append(torch.randn(4, 2, generator=gen))
    x, y = torch.cat(xs), torch.cat(ys)
    loss = (model(x) - y).pow(2).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    return model.weight.detach(), model.bias.detach()


@pytest.mark.system
def test_two_process_gloo(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / f"rank{rank}.json")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        logs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    assert r0["info"] == [0, 0, 2, True, True] and r1["info"] == [1, 1, 2, False, True]
    assert r0["ddp"] == r1["ddp"] == "DistributedDataParallel"
    assert r0["mean"] == r1["mean"] == [1.5, 5.0]
    assert r0["gathered"] == r1["gathered"] == [[0, 1], [0, 2], [1, 1], [1, 2]]
    assert r0["obj"] == r1["obj"] == {"from": 0, "list": [0, 0, 0]}
    # DDP: same weights on both ranks, equal to one step on the global batch
    assert r0["weight"] == r1["weight"] and r0["bias"] == r1["bias"]
    weight, bias = reference_step()
    torch.testing.assert_close(torch.tensor(r0["weight"]), weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(r0["bias"]), bias, rtol=1e-5, atol=1e-6)
