"""Bits/dim of a run on held-out images: the variational bound averaged over a split or a folder.

Each function takes a loaded ``Run`` (``Run.evaluate_bpd`` calls in here, so this module does not import it back).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import UserError
from ..images import uint8_to_float
from ..options import Split
from ..validate import positive_int
from .build import build_dataset

__all__ = ["evaluate_bpd", "eval_dataset"]


def evaluate_bpd(
    run,
    *,
    split: Split = "test",
    data: str | None = None,
    num: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """The bound in bits/dim (mean and standard error) with its prior and decoder parts, as a JSON-ready dict.

    ``data``: a directory of other images to measure (a folder of held-out images for a folder run,
    class sub-folders named as in training; the dataset's directory for cifar10 and mnist).
    """
    if not run.is_image:
        raise UserError("bits/dim is defined for image data on 256 levels; this run models 2-D points")
    positive_int("the batch size", batch_size)
    dataset, source = eval_dataset(run, split, data)
    n = len(dataset) if num is None else num
    if not 1 <= n <= len(dataset):
        raise UserError(f"num must be between 1 and {len(dataset)} (the size of the {source}), got {n}")
    total, prior, decoder = _bound(run, dataset, n, batch_size, seed, progress)
    cfg = run.config
    return {
        "metric": "bpd",
        "bpd": _finite(total.mean().item()),
        "stderr": _finite(total.std(unbiased=True).item() / math.sqrt(n)) if n > 1 else None,
        "num": n,
        "split": None if data and cfg.data.kind == "folder" else split,
        "data": data or getattr(cfg.data, "root", None),
        "source": source,
        "prior_bpd": _finite(prior.mean().item()),
        "decoder_bpd": _finite(decoder.mean().item()),
        "step": run.step,
        "ema": run.ema,
        "variance": cfg.diffusion.variance,
    }


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: a bound that is not finite is reported as null."""
    return value if math.isfinite(value) else None


def _bound(run, dataset, n: int, batch_size: int, seed: int, progress: bool):
    """Per-example totals, priors and decoder terms of the bound for the first n examples."""
    # deferred: tqdm costs start-up and only a shown progress bar needs it
    from tqdm.auto import tqdm

    device = run.device
    conditional = run.num_classes is not None
    gen = torch.Generator(device=device).manual_seed(seed)
    totals, priors, decoders = [], [], []
    for start in tqdm(range(0, n, batch_size), desc="bits/dim", disable=not progress, leave=False):
        rows = slice(start, min(n, start + batch_size))
        x0 = uint8_to_float(dataset.data[rows].to(device))
        y = dataset.labels[rows].to(device) if conditional else None
        terms = run.diffusion.vb_terms(run.model, x0, y, generator=gen, progress=progress)
        totals.append(terms.total.cpu())
        priors.append(terms.prior.cpu())
        decoders.append(terms.terms[:, 0].cpu())
    return torch.cat(totals), torch.cat(priors), torch.cat(decoders)


def eval_dataset(run, split: Split, root: str | None):
    """(the examples to measure, a few words naming them): the run's data at ``split``, or the images
    under ``root`` prepared as the run's were, labelled by the run's own class names."""
    cfg = run.config
    folder = cfg.data.kind == "folder"
    if root is None:
        if folder and split != "train":
            raise UserError(
                "a folder run has no test split: pass --data DIR (a folder of held-out images) or --split train"
            )
        return build_dataset(cfg.data, split), f"{split} split"
    if cfg.data.kind not in ("folder", "cifar10", "mnist"):
        raise UserError(f"--data applies to folder, cifar10 and mnist runs; the {cfg.data.kind} data has no directory")
    classes = run.num_classes
    changes = {"root": root, "channels": cfg.model.in_channels}
    if folder:
        changes["class_labels"] = cfg.data.class_labels and bool(classes)
    data_cfg = dataclasses.replace(cfg.data, **changes)
    if not folder:
        return build_dataset(data_cfg, split), f"{split} split of {root}"
    data = build_dataset(data_cfg, "train")  # the whole folder
    return (_relabel(data, run.class_names, root) if classes else data), f"images under {root}"


def _relabel(data, names: list[str] | None, root: str):
    """A folder's labels renumbered to the run's: sub-folder ``name`` gets the label the run gave it."""
    if names is None:
        raise UserError(
            "this checkpoint does not record its class names (it predates them), so the class "
            f"sub-folders under {root} cannot be matched to its labels"
        )
    index = {name: i for i, name in enumerate(names)}
    for name in data.class_names:
        if name not in index:
            raise UserError(
                f"class sub-folder {name!r} under {root} is not a class of this run (its classes: {', '.join(names)})"
            )
    relabel = torch.tensor([index[name] for name in data.class_names])
    return dataclasses.replace(data, labels=relabel[data.labels], num_classes=len(names), class_names=names)
