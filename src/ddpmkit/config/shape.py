"""The model's shape from its data: the one place that derives the network's size fields from the data."""

from __future__ import annotations

from typing import Any

from .sections import DataConfig, ExperimentConfig, Toy2DData

__all__ = ["model_shape", "as_written", "without_shape"]


def model_shape(data: DataConfig, dataset: Any = None, learned_variance: bool = False) -> dict[str, Any]:
    """The model fields the data determines. Without ``dataset``: those its config alone fixes (unet: channels,
    size, classes where the kind knows them; mlp: dim); with the dataset read: all of them, output width too."""
    if dataset is not None:
        return _from_dataset(data, dataset, 2 if learned_variance else 1)
    if isinstance(data, Toy2DData):
        return {"dim": 2}
    channels, size, classes = data.native
    shape = {"in_channels": data.channels or channels, "image_size": data.image_size or size}
    if classes is not None:
        shape["num_classes"] = classes if data.conditional else None
    return {k: v for k, v in shape.items() if v is not None or k == "num_classes"}


def _from_dataset(data: DataConfig, dataset: Any, width: int) -> dict[str, Any]:
    """Every shape field from the data read: its sample shape, its labels (when trained on), ``width`` outputs per
    input channel (2 with a learned variance)."""
    if isinstance(data, Toy2DData):  # points carry no labels
        (d,) = dataset.shape
        return {"dim": d, "num_classes": None, "out_dim": width * d}
    num_classes = dataset.num_classes if dataset.labels is not None and data.conditional else None
    c, h, w = dataset.shape
    size = h if h == w else (h, w)  # a square size is written S, as before non-square images
    return {"in_channels": c, "image_size": size, "num_classes": num_classes, "out_channels": width * c}


def as_written(value: Any) -> Any:
    """A value as YAML writes it (an [H, W] size as a list, a square one as S), so sizes compare as written."""
    if isinstance(value, (list, tuple)):
        value = list(value)
        return value[0] if len(value) == 2 and value[0] == value[1] and isinstance(value[0], int) else value
    return value


def without_shape(cfg: ExperimentConfig) -> dict:
    """``cfg`` as a dict without the model fields its data filled in, so that data overrides (--image-size,
    a 3-channel --data) shape the model again instead of clashing with the old data's shape."""
    d = cfg.to_dict()
    for key, value in model_shape(cfg.data).items():
        if as_written(d["model"].get(key)) == as_written(value):
            d["model"].pop(key, None)
    return d
