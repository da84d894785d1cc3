"""Presets, YAML files and ``--set`` assignments: where a config's values come from, merged in that order."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..errors import UserError
from ..files import write_text
from .experiment import experiment_from_dict
from .sections import ExperimentConfig

__all__ = [
    "preset_names",
    "preset_path",
    "read_yaml",
    "deep_merge",
    "load_config",
    "config_yaml",
    "save_config",
    "parse_assignments",
]

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def preset_names() -> list[str]:
    """The presets shipped under ddpmkit/configs (toy2d-<name> presets expand from toy2d.yaml)."""
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    return names


def preset_path(name: str) -> Path:
    """The YAML file of a preset; ``toy2d-NAME`` maps to toy2d.yaml with data.toy2d = NAME."""
    base = "toy2d" if name.startswith("toy2d-") else name
    path = PRESET_DIR / f"{base}.yaml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())} (toy2d as toy2d-<name>)")
    return path


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"config file {str(path)!r} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, merging nested mappings."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    preset: str | None = None, config_file: str | Path | None = None, overrides: dict | None = None
) -> ExperimentConfig:
    """Preset, then the user's YAML file, then command-line overrides, validated strictly."""
    data: dict = {}
    if preset is not None:
        data = read_yaml(preset_path(preset))
        if preset.startswith("toy2d-"):
            data = deep_merge(data, {"name": preset, "data": {"distribution": preset[len("toy2d-") :]}})
    if config_file is not None:
        data = deep_merge(data, read_yaml(config_file))
    if overrides:
        data = deep_merge(data, overrides)
    if preset is None and config_file is None:
        raise UserError("give a --preset or a --config file")
    return experiment_from_dict(data)


def config_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML text (read back as a config file, it gives the same config)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    write_text(path, config_yaml(cfg))


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_assignments(items: list[str] | None) -> dict:
    """``["train.lr=1e-3", "train.loggers=[jsonl, tensorboard]"]`` (``--set``) as nested overrides; each
    value is read as YAML (``null``, ``true``, numbers, ``[a, b]``), a number like 1e-3 as a float."""
    out: dict = {}
    for item in items or []:
        key, eq, text = item.partition("=")
        parts = key.strip().split(".")
        if not eq or len(parts) < 2 or not all(p.strip() for p in parts):
            raise UserError(f"--set {item!r}: give section.key=value (for example train.lr=1e-4)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part.strip(), {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part.strip()!r} was given a value already")
        node[parts[-1].strip()] = value
    return out
