"""Post-hoc EMA: a power EMA of any width rebuilt from a run's snapshots (power_ema's least-squares fit), written
as a run every command samples, or swept over widths and scored with a cheap metric to choose one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..config import config_from_checkpoint
from ..errors import UserError
from ..eval.digits import evaluate_digit_samples
from ..eval.inception import InceptionFeatures
from ..eval.quality import load_stats, reference_stats
from ..files import write_text
from ..images import to_uint8
from ..options import Device, EMASweepMetric, check_choice
from ..power_ema import (
    PowerProfile,
    gamma_from_sigma_rel,
    posthoc_coefficients,
    profile_fit_error,
    reconstruct_state_dict,
)
from ..train.averages import SNAPSHOT_FORMAT
from ..train.checkpoint import load_weights_only, save_checkpoint
from ..validate import positive_int
from .build import build_model
from .outputs import check_output, claimed_folder
from .quality import evaluate_quality, reference_images
from .run import Run
from .rundir import RunDir, load_checkpoint

__all__ = [
    "Rebuilt",
    "read_snapshots",
    "rebuild",
    "rebuilt_run_dir",
    "write_rebuilt_run",
    "parse_sweep",
    "sweep",
]

# the score each metric ranks widths by, and whether higher is better
_RANKED_BY = {"digits": ("accuracy", True), "fid": ("fid", False), "bpd": ("bpd", False)}


class Rebuilt(NamedTuple):
    """One width rebuilt: its weights, the step its profile is read at, the fit's coefficients and error."""

    sigma_rel: float
    step: int
    coefficients: np.ndarray  # one per (snapshot, width), snapshots oldest first
    fit_error: float  # relative L2 distance of the combined profile from the target's (0: exact)
    state: dict[str, torch.Tensor]


def read_snapshots(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's power EMA snapshots, oldest first; a run without any is refused."""
    files = RunDir(run_dir).list_ema_snapshots()
    if not files:
        raise UserError(
            f"{str(run_dir)!r} has no power EMA snapshots (ema_snapshots/step_*.pt): train it with "
            f"--set train.ema_kind=power --set train.ema_snapshot_every=N"
        )
    snapshots = []
    for step, path in files:
        snap = load_weights_only(path, "EMA snapshot")
        if not isinstance(snap, dict) or snap.get("format") != SNAPSHOT_FORMAT or snap.get("step") != step:
            raise UserError(f"{str(path)!r} is not a power EMA snapshot of step {step}")
        snapshots.append(snap)
    return snapshots


def rebuild(snapshots: list[dict[str, Any]], sigma_rel: float, copied: set[str]) -> Rebuilt:
    """The power EMA of width ``sigma_rel`` read at the last snapshot's step, from every stored average;
    ``copied`` entries (buffers) come from the last snapshot as they are."""
    target = PowerProfile(gamma_from_sigma_rel(sigma_rel), float(snapshots[-1]["step"]))
    profiles = [PowerProfile(g, float(s["step"])) for s in snapshots for g in s["gammas"]]
    states = [average for s in snapshots for average in s["averages"]]
    x = posthoc_coefficients(profiles, target)
    state = reconstruct_state_dict(states, x, copied)
    return Rebuilt(float(sigma_rel), int(target.t), x, profile_fit_error(profiles, x, target), state)


def _buffers(model: torch.nn.Module) -> set[str]:
    """State-dict entries that are not parameters: copied, not averaged."""
    return set(model.state_dict()) - {name for name, _ in model.named_parameters()}


def rebuilt_run_dir(run_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """``out`` checked as every command's output folder is, for ``write_rebuilt_run``: a sweep with --keep-best and
    --out asks before it scores anything."""
    src, dst = Path(run_dir), Path(out)
    if dst.resolve() == src.resolve():
        raise UserError(f"--out {str(dst)!r} is the run itself: give another directory")
    return check_output(dst, force, folder=True)


def write_rebuilt_run(run_dir: str | Path, sigma_rel: float, out: str | Path | None, force: bool = False) -> Path:
    """A new run directory (default ``RUN-ema<sigma_rel>``) whose checkpoint is the run's latest with the EMA
    weights of width ``sigma_rel`` rebuilt from its snapshots; every command samples it."""
    gamma_from_sigma_rel(sigma_rel)  # a width out of range is refused before anything is read
    default = f"{str(Path(run_dir)).rstrip('/')}-ema{sigma_rel:g}"
    dst = RunDir(rebuilt_run_dir(run_dir, default if out is None else out, force))
    snapshots = read_snapshots(run_dir)
    ckpt = load_checkpoint(run_dir)
    cfg = config_from_checkpoint(ckpt["config"], ckpt["version"])
    rebuilt = rebuild(snapshots, sigma_rel, _buffers(build_model(cfg.model)))
    extra = dict(ckpt["extra"] or {})
    extra["posthoc_ema"] = {"sigma_rel": rebuilt.sigma_rel, "step": rebuilt.step, "fit_error": rebuilt.fit_error}
    fields = {k: ckpt[k] for k in ("config", "model", "optimizer", "rng")}
    with claimed_folder(dst.path, force):
        dst.lay_out(cfg)
        for old in dst.list_checkpoints():  # --force: a later step of another run would hide this one
            old.unlink()
        return save_checkpoint(
            dst.checkpoint(ckpt["step"]), step=ckpt["step"], ema=rebuilt.state, extra=extra, **fields
        )


def parse_sweep(text: str) -> list[float]:
    """``LO:HI:N`` -> N widths evenly spaced from LO to HI (both kept), each a valid sigma_rel."""
    parts = text.split(":")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        ok = len(parts) == 3 and n >= 2 and lo < hi
    except (ValueError, IndexError):
        ok = False
    if not ok:
        raise UserError(
            f"--sweep must be LO:HI:N (N >= 2 widths from LO to HI > LO), for example 0.02:0.25:8; got {text!r}"
        )
    widths = [float(s) for s in np.linspace(lo, hi, n)]
    for s in (widths[0], widths[-1]):
        gamma_from_sigma_rel(s)
    return widths


def sweep(
    run_dir: str | Path,
    widths: list[float],
    metric: str,
    *,
    num: int | None = None,
    seed: int = 0,
    device: Device = "auto",
    progress: bool = False,
    ref: str = "test",
    steps: int | None = None,
    network: str | Path | None = None,
    tell: Callable[[dict], None] | None = None,  # hears each row as it is scored
) -> dict[str, Any]:
    """Score the width of each of ``widths`` rebuilt from the run's snapshots with ``metric``; the table (kept in
    RUN/ema_snapshots/sweep-<metric>.json) and the best width. Samples are drawn with the run's sampler in ``steps``
    calls (None: its own); FID compares with ``ref`` (as ``eval --ref``), read or computed once for all widths, with
    the Inception ``network`` (None: the installed wheel's; another file is accepted unchecked, as ``--inception``)."""
    check_choice("--metric", metric, EMASweepMetric)
    if num is not None:
        positive_int("--num", num)  # not `num or default` below: 0 would score the default's count
    snapshots = read_snapshots(run_dir)
    run = Run.load(run_dir, device=device)
    if metric == "digits" and run.config.data.kind != "digits":
        raise UserError(f"--metric digits judges 8x8 digits; this run trained on {run.config.data.kind}")
    fid = _FIDReference(run, ref, network, progress) if metric == "fid" else None
    copied = _buffers(run.model)
    key, higher = _RANKED_BY[metric]
    rows = []
    for s in widths:
        rebuilt = rebuild(snapshots, s, copied)
        run.model.load_state_dict(rebuilt.state)
        row = {
            "sigma_rel": s,
            key: _score(run, metric, num, {"seed": seed, "steps": steps}, progress, fid),
            "fit_error": rebuilt.fit_error,
        }
        rows.append(row)
        if tell is not None:
            tell(row)
    best = (max if higher else min)(rows, key=lambda r: r[key])
    table = {"metric": metric, "ranked_by": key, "higher_is_better": higher, "num": num, "seed": seed}
    table.update({"ref": ref} if metric == "fid" else {})
    table.update({"steps": steps} if steps is not None and metric != "bpd" else {})
    table.update({"step": int(snapshots[-1]["step"]), "rows": rows, "best_sigma_rel": best["sigma_rel"]})
    write_text(RunDir(run_dir).ema_sweep(metric), json.dumps(table, indent=2) + "\n")
    return table


class _FIDReference:
    """The Inception network and the reference statistics of a FID sweep, loaded or computed once: the test
    split's 10,000 MNIST images take minutes on a CPU, each width's 1,000 samples much less."""

    def __init__(self, run: Run, ref: str, network: str | Path | None, progress: bool):
        self.net = InceptionFeatures(network, allow_unknown=network is not None)
        c, h = run.sample_shape[0], run.sample_shape[1]
        found = reference_images(ref, run, h, c)
        if isinstance(found, Path):
            self.stats = load_stats(found)
        else:
            self.stats = reference_stats(found, extractor=self.net, progress=progress)


def _score(run: Run, metric: str, num: int | None, drawn: dict, progress: bool, fid: _FIDReference | None) -> float:
    """The score ``metric`` gives the run's current weights: the digits judge's class accuracy on ``num``
    (default 500) samples, FID of ``num`` (default 1000) samples against the reference, or bits/dim; ``drawn``:
    the samples' seed and network calls."""
    if metric == "bpd":
        return float(run.evaluate_bpd(split="test", num=num, seed=drawn["seed"], progress=progress)["bpd"])
    if fid is not None:
        found = evaluate_quality(run, ["fid"], fid.stats, num=num or 1000, sample_options=drawn, extractor=fid.net)
        return float(found["fid"])
    if run.num_classes is None:
        raise UserError("--metric digits ranks widths by class accuracy: it needs a class-conditional run")
    samples = run.sample(num or 500, labels="all", progress=progress, **drawn)
    images = to_uint8(samples.x, run.config.sample.levels)
    labels = None if samples.labels is None else samples.labels.numpy()
    return float(evaluate_digit_samples(images, labels, num_permutations=10, seed=drawn["seed"])["accuracy"])
