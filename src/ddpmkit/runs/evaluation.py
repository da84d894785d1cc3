"""What ``ddpmkit eval`` measures, chosen by its metrics: the bound in bits/dim of a run, Inception scores of a
run's samples or of a sample file, or the digits judge's report on a sample file; and where a result is kept."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

from ..errors import UserError
from ..eval.digits import evaluate_digit_samples
from ..images import read_sample_arrays
from ..options import Device, SamplerName, Split
from .quality import evaluate_quality
from .report import record_eval
from .run import Run

__all__ = ["evaluate", "keep_result", "BPD", "DIGITS"]

BPD = "bpd"  # measured alone: the variational bound of a run on data
DIGITS = "digits"  # measured alone: the 8x8 digits judge's report on a sample file


def evaluate(
    source: str,
    metrics: Sequence[str],
    *,
    ref: str = "test",
    split: Split = "test",
    data: str | None = None,
    num: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    ema: bool = True,
    device: Device = "auto",
    sampler: SamplerName | None = None,
    steps: int | None = None,
    inception: str | None = None,
    resize: str = "pytorch-fid",
    permutations: int = 200,
    labels: bool = True,
    progress: bool = True,
) -> dict:
    """The result of ``metrics`` on ``source`` (a run directory, a checkpoint, or a samples ``.npz``)."""
    alone_why = ((BPD, "fid, kid and pr score samples"), (DIGITS, "the digits judge scores a sample file on its own"))
    for alone, why in alone_why:
        if alone in metrics and len(set(metrics)) > 1:
            raise UserError(f"--metric {alone} is measured alone ({why})")
    if DIGITS in metrics:
        if Path(source).is_dir():
            raise UserError(
                f"--metric digits scores a samples .npz, not a run directory: write one with "
                f"`ddpmkit sample {source} --labels all --out samples.npz`"
            )
        images, given = read_sample_arrays(source)  # the judge checks their shape: [N, 8, 8] or [N, 8, 8, 1]
        return evaluate_digit_samples(
            images,
            given if labels else None,
            reference=cast(Split, ref),  # it checks ref
            num_permutations=permutations,
            seed=seed,
        )
    if BPD not in metrics:
        scored = source if source.endswith(".npz") else Run.load(source, ema=ema, device=device)
        options = {"sampler": sampler, "steps": steps, "seed": seed, "batch_size": batch_size, "progress": progress}
        return evaluate_quality(
            scored,
            list(metrics),
            ref,
            num=num or 10000,
            sample_options=options,
            network=inception,
            allow_unknown=bool(inception),
            resize=resize,
            progress=progress,
        )
    if source.endswith(".npz"):
        raise UserError(
            f"--metric bpd measures a model's bound on data: give a run directory or a checkpoint, not the "
            f"sample file {source!r} (fid, kid and pr score sample files)"
        )
    run = Run.load(source, ema=ema, device=device)
    return run.evaluate_bpd(split=split, data=data, num=num, batch_size=batch_size, seed=seed, progress=progress)


def keep_result(
    source: str,
    result: dict,
    metrics: Sequence[str],
    *,
    ref: str = "test",
    split: str = "test",
    data: str | None = None,
) -> str | None:
    """Keep a run directory's result in RUN/eval for ``ddpmkit report``; returns why it could not be kept, if so
    (the measurement stands; only its copy in the run is missing). Checkpoints and sample files keep nothing."""
    if not Path(source).is_dir():
        return None
    scores = [m for m in metrics if m != BPD]
    try:
        record_eval(source, result, scores or [BPD], ref if scores else (data or split))
    except (UserError, OSError) as e:
        return str(e)
    return None
