"""The typed config: every value refused when read, one wording, each choice declared once, old layouts."""

from pathlib import Path

import pytest
import yaml

from ddpmkit import UserError, options
from ddpmkit.cli import build_parser
from ddpmkit.config import (
    CIFAR10Data,
    DigitsData,
    FolderData,
    SampleConfig,
    Toy2DData,
    TrainConfig,
    config_from_checkpoint,
    experiment_from_dict,
    load_config,
    model_shape,
    upgrade_config,
)

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("sample", "spacing", "linspcae", "'sample.spacing' must be one of 'linspace'"),
        ("sample", "sampler", "dpm++", "'sample.sampler' must be one of 'ddpm'"),
        ("sample", "grid_sampler", "euler", "'sample.grid_sampler' must be one of"),
        ("diffusion", "min_snr_gamma", float("nan"), "'diffusion.min_snr_gamma' must be a finite number"),
        ("train", "weight_decay", float("inf"), "'train.weight_decay' must be a finite number"),
        ("diffusion", "p_uncond", 1.0, "'diffusion.p_uncond' must be in [0, 1)"),
        ("diffusion", "loss", "hybrid", "'diffusion.loss' must be 'l2' or 'l1' unless"),
        ("diffusion", "beta_end", 1.5, "'diffusion.beta_end' must be in (0, 1)"),
        ("train", "compile_mode", "fastest", "'train.compile_mode' must be one of"),
        ("train", "seed", -1, "'train.seed' must be at least 0"),
        ("model", "dropout", 1.0, "'model.dropout' must be in [0, 1)"),
        ("model", "attention_resolutions", [3], "'model.attention_resolutions' must be sizes of levels (8, 4, 2"),
        ("model", "in_channels", 3, "'model.in_channels' must be 1, as the data gives"),
        ("model", "image_size", 16, "'model.image_size' must be 8, as the data gives"),
        ("model", "kind", "mlp", "unknown config key 'model.base_channels'; known keys here: dim, hidden"),
        ("data", "kind", "imagenet", "'data.kind' must be one of 'digits'"),
        ("data", "root", "/tmp", "unknown config key 'data.root'"),
        ("data", "channels", 2, "'data.channels' must be 1, 3 or null"),
    ],
)
def test_every_value_is_refused_when_the_config_is_read(section, key, value, words):
    """Before any data, network or training: one UserError in one wording, naming the key."""
    with pytest.raises(UserError) as info:
        load_config("digits", overrides={section: {key: value}})
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_model_kind_must_fit_the_data():
    with pytest.raises(UserError, match="'model.kind' must be 'mlp' for 2-D point data and 'unet' for images"):
        experiment_from_dict({"data": {"kind": "digits"}, "model": {"kind": "mlp"}})
    with pytest.raises(UserError, match="'model.kind' must be 'mlp' for 2-D point data"):
        experiment_from_dict({"data": {"kind": "toy2d"}, "model": {"kind": "unet"}})


def test_a_spacing_typo_in_a_yaml_file_fails_at_load_not_at_sample(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sample:\n  spacing: snr-root\n")
    with pytest.raises(UserError, match="'sample.spacing' must be one of"):
        load_config("digits", path)


def test_each_data_kind_has_its_own_section():
    assert isinstance(load_config("digits").data, DigitsData)
    assert isinstance(load_config("toy2d-moons").data, Toy2DData)
    assert isinstance(load_config("cifar10").data, CIFAR10Data)
    folder = load_config("folder", overrides={"data": {"root": "x"}})
    assert isinstance(folder.data, FolderData) and folder.data.root == "x"
    with pytest.raises(UserError, match="'data.image_size' must be set for folder data"):
        load_config("folder", overrides={"data": {"image_size": None}})
    with pytest.raises(UserError, match="unknown config key 'data.num_samples'"):
        load_config("digits", overrides={"data": {"num_samples": 5}})
    with pytest.raises(UserError, match="'data.distribution' must be one of 'moons'"):
        load_config("toy2d-moons", overrides={"data": {"distribution": "spiral"}})


def test_the_model_section_is_the_networks_own_config_with_the_datas_shape():
    cfg = load_config("digits")
    assert (cfg.model.kind, cfg.model.in_channels, cfg.model.image_size, cfg.model.num_classes) == ("unet", 1, 8, 10)
    assert load_config("digits", overrides={"data": {"conditional": False}}).model.num_classes is None
    assert load_config("mnist").model.image_size == 28
    assert load_config("toy2d-moons").model.dim == 2


def test_huge_bad_values_are_shortened_in_the_message():
    bomb = [[list(range(1000))] * 1000]
    with pytest.raises(UserError) as info:
        load_config("digits", overrides={"train": {"adam_betas": bomb}})
    assert len(str(info.value)) < 300


def test_argparse_choices_are_the_declared_literals():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    by_flag = {(cmd, a.dest): a.choices for cmd, p in sub.items() for a in p._actions}
    assert tuple(by_flag[("sample", "sampler")]) == options.choices(options.SamplerName)
    assert tuple(by_flag[("sample", "spacing")]) == options.choices(options.Spacing)
    assert tuple(by_flag[("train", "compile_mode")]) == options.choices(options.CompileMode)
    assert tuple(by_flag[("train", "precision")]) == options.choices(options.Precision)
    hints = {**TrainConfig.__annotations__, **SampleConfig.__annotations__}
    assert hints["sampler"] == "SamplerName" and hints["spacing"] == "Optional[Spacing]"


def test_the_layout_before_typed_sections_still_loads():
    """config.yaml and checkpoints of ddpmkit 0.1 (data.name with every dataset's keys, train.compile)."""
    old = yaml.safe_load((LEGACY / "digits_unet_config.yaml").read_text())
    assert old["data"]["name"] == "digits" and old["train"]["compile"] is False
    cfg = experiment_from_dict(old)
    assert isinstance(cfg.data, DigitsData) and cfg.train.compile_mode is None
    assert cfg.model.base_channels == 8 and cfg.model.num_classes == 10
    compiled = experiment_from_dict({**old, "train": {**old["train"], "compile": True, "compile_mode": "default"}})
    assert compiled.train.compile_mode == "default"
    toy = {"data": {"name": "toy2d", "toy2d": "moons", "num_samples": 20000, "root": None}, "model": {"kind": "mlp"}}
    assert experiment_from_dict(toy).data == Toy2DData(distribution="moons")


def test_upgrades_are_keyed_by_the_checkpoint_format_version():
    """Format 1 may hold the layout of ddpmkit 0.1 and is upgraded; format 2 is today's, read as written."""
    old = yaml.safe_load((LEGACY / "digits_unet_config.yaml").read_text())
    assert upgrade_config(old, 1)["data"]["kind"] == "digits" and "compile" not in upgrade_config(old, 1)["train"]
    assert upgrade_config(old, None) == upgrade_config(old, 1)  # a YAML file carries no version
    assert upgrade_config(old, 2) is old
    assert config_from_checkpoint(old, 1) == experiment_from_dict(old)
    with pytest.raises(UserError, match="data"):
        config_from_checkpoint(old, 2)


def test_the_model_shape_from_the_config_alone_and_from_the_data_read():
    digits = load_config("digits")
    assert model_shape(digits.data) == {"in_channels": 1, "image_size": 8, "num_classes": 10}
    data = type("Data", (), {"shape": (1, 8, 16), "labels": [0], "num_classes": 10})()
    assert model_shape(digits.data, data, learned_variance=True) == {
        "in_channels": 1,
        "image_size": (8, 16),
        "num_classes": 10,
        "out_channels": 2,
    }
    assert model_shape(load_config("toy2d-moons").data) == {"dim": 2}


def test_a_config_round_trips_through_yaml():
    for preset in ("digits", "toy2d-moons", "mnist", "cifar10"):
        cfg = load_config(preset)
        assert experiment_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "section, key",
    [
        ("train", "adam_betas"),
        ("model", "channel_mults"),
        ("train", "seed"),
        ("model", None),
        ("data", "kind"),
        ("data", None),
    ],
)
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, section, key):
    """Nine levels of nine aliases (9**9 leaves if expanded): refused in well under a second, in one short line."""
    import time

    anchors = ['x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    anchors += [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 9)]
    use = f"{section}:\n  {key}: *x8\n" if key else f"{section}: *x8\n"
    path = tmp_path / "bomb.yaml"
    path.write_text("anchors:\n" + "\n".join("  " + line for line in anchors) + "\n" + use)
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        load_config("digits", path)
    assert time.monotonic() - start < 2 and len(str(info.value)) < 300 and "\n" not in str(info.value)
