"""Sample quality of a run (or of any sample file) on Inception features: FID, KID, precision/recall."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

from ..config import load_config
from ..errors import UserError
from ..eval import quality
from ..images import load_npz, to_uint8
from ..options import Channels, Split
from .build import build_dataset
from .run import Run

__all__ = ["reference_images", "evaluate_quality", "dataset_images"]


def dataset_images(run: Run, split: Split) -> torch.Tensor:
    """The run's own data at ``split`` as uint8 NCHW."""
    if run.config.data.kind == "folder" and split != "train":
        raise UserError("a folder run has no test split: give --ref DIR (a folder of held-out images) or --ref train")
    return build_dataset(run.config.data, split).data


def reference_images(ref: str, run: Run | None, size: int, channels: int):
    """What ``--ref`` names: a stats or features ``.npz``, the run's train/test split, or a folder of images
    prepared at the samples' size and channels."""
    path = Path(ref)
    if ref in ("train", "test"):
        if run is None:
            raise UserError(
                f"--ref {ref} needs a run (a sample file has no {ref} split to compare with): give --ref DIR (a "
                f"folder of images) or --ref STATS.npz (from `ddpmkit stats`)"
            )
        return dataset_images(run, "train" if ref == "train" else "test")
    if path.suffix == ".npz":
        return path
    if path.is_dir():
        # deferred: the dataset loaders cost start-up and only a folder of images needs them
        from ..data import load_image_folder

        return load_image_folder(path, size, cast(Channels, channels)).data  # 1 or 3: read from images
    raise UserError(f"--ref must be train, test, a directory of images or a stats .npz, got {ref!r}")


def evaluate_quality(
    source: Run | str | Path,
    metrics: list[str],
    ref: str | dict,
    *,
    num: int = 10000,
    sample_options: dict | None = None,
    **score_options,
) -> dict:
    """Score ``num`` samples of a run (drawn with ``sample_options``), or the images of a sample ``.npz``,
    against ``ref`` (what ``--ref`` names, or a reference dict from :func:`ddpmkit.eval.quality.reference_stats`);
    ``score_options`` go to :func:`ddpmkit.eval.quality.score`."""
    if isinstance(source, Run):
        if not source.is_image:
            raise UserError("FID, KID and precision/recall score images; this run models 2-D points")
        samples = source.sample(num, **(sample_options or {}))
        images = torch.from_numpy(to_uint8(samples.x, source.config.sample.levels)).permute(0, 3, 1, 2)
        run = source
    else:
        images = torch.from_numpy(load_npz(source)[0]).permute(0, 3, 1, 2)[:num]
        run = None
    c, h, w = images.shape[1:]
    reference = ref if isinstance(ref, dict) else reference_images(ref, run, h, c)
    result = quality.score(images.contiguous(), reference, metrics, **score_options)
    return {
        **result,
        "ref": ref if isinstance(ref, str) else "reference statistics given",
        "source": str(run.checkpoint if run else source),
        **({"step": run.step, "ema": run.ema} if run else {}),
    }


def stats_of(
    source: str,
    *,
    out: str | Path,
    split: Split = "train",
    data: str | None = None,
    image_size: int | list[int] | None = None,
    features: bool = False,
    **options,
) -> dict:
    """Reference statistics of a directory of images or a preset's dataset, written to ``out``."""
    path = Path(source)
    if path.is_dir():
        # deferred: the dataset loaders cost start-up and only a folder of images needs them
        from ..data import load_image_folder

        if image_size is None:
            raise UserError("give --image-size for a directory of images")
        images = load_image_folder(
            path, image_size if isinstance(image_size, int) else (image_size[0], image_size[1])
        ).data
    else:
        over = {"data": {k: v for k, v in (("root", data), ("image_size", image_size)) if v is not None}}
        images = build_dataset(load_config(source, overrides=over).data, split).data
    stats = quality.reference_stats(images, **options)
    (quality.save_features if features else quality.save_stats)(out, stats)
    return {
        "num": int(stats["num"]),
        "out": str(out),
        "image_shape": list(images.shape[1:]),
        "network_sha1": stats.get("sha1"),
        "resize": stats.get("resize"),
    }
