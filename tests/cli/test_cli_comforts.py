"""The command line's comforts: --version, help with defaults and examples that parse, --set on any config
key (checked by the config validator), `ddpmkit config` printing a resolved config that reads back the
same, and the py.typed marker."""

import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

import ddpmkit
from ddpmkit.cli import build_parser, main
from ddpmkit.config import load_config, parse_assignments, preset_names
from helpers import resume_args

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(next(a for a in build_parser()._actions if a.dest == "command").choices)  # every sub-command


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert capsys.readouterr().out.strip() == f"ddpmkit {ddpmkit.__version__}" == f"ddpmkit {project['version']}"


def help_of(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_defaults_and_examples_that_parse(command, capsys):
    text = help_of(command, capsys)
    assert "default: None" not in text and "default: False" not in text
    examples = text.split("examples:\n", 1)[1].strip().splitlines()
    assert examples
    for line in examples:
        for part in line.split("&&"):  # config's example pipes into train
            words = shlex.split(part.split(">")[0])
            assert words[0] == "ddpmkit"
            args = build_parser().parse_args(words[1:])
            assert args.command in COMMANDS


def test_help_shows_the_defaults_of_the_parser(capsys):
    text = " ".join(help_of("sample", capsys).split())  # argparse wraps lines
    assert "number of samples (default: 64)" in text and "(default: 256)" in text
    assert "where to run (default: auto)" in text
    text = " ".join(help_of("eval", capsys).split())
    assert "(default: bpd)" in text and "(default: pytorch-fid)" in text


def test_parse_assignments_reads_yaml_scalars():
    got = parse_assignments(
        [
            "train.lr=1e-3",
            "train.steps=7",
            "train.grad_clip=null",
            "train.compile_mode=default",
            "train.loggers=[jsonl, tensorboard]",
            "data.hflip=true",
            "model.channel_mults=[1,2]",
        ]
    )
    assert got == {
        "train": {
            "lr": 1e-3,
            "steps": 7,
            "grad_clip": None,
            "compile_mode": "default",
            "loggers": ["jsonl", "tensorboard"],
        },
        "data": {"hflip": True},
        "model": {"channel_mults": [1, 2]},
    }
    assert isinstance(got["train"]["steps"], int)


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.lr", "give section.key=value"),
        ("lr=1", "give section.key=value"),
        ("train.=1", "give section.key=value"),
        ("train.lr=[1", "not valid YAML"),
    ],
)
def test_malformed_set_is_one_error_line(item, message, capsys):
    assert main(["config", "--preset", "digits", "--set", item]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.nope=1", "unknown config key 'train.nope'"),
        ("train.lr=-1", "config key 'train.lr' must be a positive number, got -1"),
        ("train.loggers=[jsonl, wandb]", "config key 'train.loggers' must be"),
        ("sample.sampler=euler", "config key 'sample.sampler' must be one of"),
    ],
)
def test_bad_set_is_refused_by_the_config_validator(item, message, capsys, tmp_path):
    for argv in (["config", "--preset", "digits"], ["train", "--preset", "digits", "--out", str(tmp_path / "r")]):
        assert main([*argv, "--set", item]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("preset", [*[p for p in preset_names() if p != "toy2d"], "toy2d-moons"])
def test_config_output_reads_back_as_the_same_config(preset, tmp_path, capsys):
    assert main(["config", "--preset", preset, "--set", "train.steps=123"]) == 0
    text = capsys.readouterr().out
    resolved = load_config(preset, overrides={"train": {"steps": 123}})
    assert yaml.safe_load(text) == resolved.to_dict()
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(None, tmp_path / "c.yaml").to_dict() == resolved.to_dict()
    assert main(["config", "--config", str(tmp_path / "c.yaml")]) == 0
    assert capsys.readouterr().out == text


def test_train_with_set_then_resume_with_a_resumable_set(tmp_path, capsys):
    from conftest import TINY_DIGITS

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_DIGITS))
    out = tmp_path / "r"
    base = ["train", "--preset", "digits", "--config", str(tmp_path / "tiny.yaml"), "--no-progress"]
    # --set reaches the config; a dedicated flag wins over --set of the same key
    assert (
        main(
            [
                *base,
                "--out",
                str(out),
                "--set",
                "train.steps=2",
                "--set",
                "train.log_every=1",
                "--set",
                "model.dropout=0.25",
                "--lr",
                "0.003",
                "--set",
                "train.lr=0.1",
            ]
        )
        == 0
    )
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["steps"] == 2 and cfg["train"]["log_every"] == 1 and cfg["model"]["dropout"] == 0.25
    assert cfg["train"]["lr"] == 0.003
    capsys.readouterr()
    # a resumed run may change its loggers, not its maths
    assert main(resume_args(out, "--set", "train.steps=3", "--set", "model.dropout=0.5")) == 2
    assert "dropout" in capsys.readouterr().err
    pytest.importorskip("tensorboard")
    assert main(resume_args(out, "--steps", 3, "--set", "train.loggers=[jsonl, tensorboard]")) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["loggers"] == ["jsonl", "tensorboard"]
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_py_typed_ships_with_the_package():
    assert (Path(ddpmkit.__file__).parent / "py.typed").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ddpmkit"]
    assert "py.typed" in data
