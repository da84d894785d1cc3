"""The whole experiment config from a plain dict: older layouts upgraded, the model shaped by its data, checked.

A config is a name, a data section (chosen by ``data.kind``), a model section (the network's
own config, chosen by ``model.kind``), and the diffusion, train and sample sections. The resolved
config (every default filled in, the model's shape from the data) is saved in the run directory
and inside every checkpoint, so sampling needs nothing but the checkpoint.
"""

from __future__ import annotations

from typing import Any

from ..fields import coerce, fail, from_dict, require
from .sections import DataConfig, ExperimentConfig
from .shape import as_written, model_shape
from .upgrades import upgrade_config

__all__ = ["experiment_from_dict", "config_from_checkpoint"]


def experiment_from_dict(d: Any, version: int | None = None) -> ExperimentConfig:
    """Build and check a whole experiment config, written under checkpoint format ``version`` (None: a YAML
    file or a dict of no known version). The model fields that the data config determines are filled in
    from it; a value given for one of them must agree."""
    if not isinstance(d, dict):
        fail("top level", "a mapping of sections", d)
    d = upgrade_config(d, version)
    data = coerce(DataConfig, d.get("data", {}), "data")
    model = d.get("model", {})
    if isinstance(model, dict):
        model = {"kind": "mlp" if data.kind == "toy2d" else "unet", **model}
        if (model["kind"] == "mlp") == (data.kind == "toy2d"):
            for key, value in model_shape(data).items():
                given = as_written(model.get(key))
                require(
                    given in (None, as_written(value)),
                    f"model.{key}",
                    f"{as_written(value)!r}, as the data gives",
                    given,
                )
                model[key] = value
    return from_dict(ExperimentConfig, {**d, "data": data, "model": model})


def config_from_checkpoint(d: dict, version: int | None = None) -> ExperimentConfig:
    """Rebuild the config stored inside a checkpoint of format ``version`` (also one written before the typed
    sections)."""
    return experiment_from_dict(d, version)
