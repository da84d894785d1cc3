"""The experiment config: typed sections, the model's shape from its data, presets, ``--set`` assignments and
upgrades of older layouts."""

from ..fields import from_dict
from . import sections
from .experiment import config_from_checkpoint, experiment_from_dict
from .presets import (
    config_yaml,
    deep_merge,
    load_config,
    parse_assignments,
    preset_names,
    preset_path,
    read_yaml,
    save_config,
)
from .sections import *  # noqa: F403 - every name of sections.__all__, listed once there
from .shape import as_written, model_shape, without_shape
from .upgrades import upgrade_config

__all__ = [
    *sections.__all__,
    "from_dict",
    "load_config",
    "preset_names",
    "preset_path",
    "save_config",
    "config_from_checkpoint",
    "config_yaml",
    "parse_assignments",
    "experiment_from_dict",
    "as_written",
    "deep_merge",
    "read_yaml",
    "model_shape",
    "without_shape",
    "upgrade_config",
]
