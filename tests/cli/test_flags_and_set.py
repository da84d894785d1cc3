"""train's flags and --set are merged first and the config checked once: a message never names a value that the
command line replaced."""

import ddpmkit.runs.training as training
from helpers import run_cli_streams


def test_image_size_flag_and_set_are_checked_together(tmp_path, monkeypatch):
    seen = {}

    def prepared_only(cfg, run_dir, *, resume, force, overrides, **_):
        seen["cfg"], _ = training.prepare(cfg, run_dir, resume=resume, force=force, overrides=overrides)
        return {"step": 0}

    monkeypatch.setattr(training, "train", prepared_only)
    code, _, err = run_cli_streams(
        "train", "--preset", "folder", "--data", tmp_path, "--image-size", "8", "--out", tmp_path / "run",
        "--set", "model.attention_resolutions=[8]", "--set", "model.channel_mults=[1,2]",
    )  # fmt: skip
    assert code == 0, err
    cfg = seen["cfg"]
    assert cfg.data.image_size == 8 and cfg.model.image_size == 8
    assert list(cfg.model.attention_resolutions) == [8] and list(cfg.model.channel_mults) == [1, 2]


def test_a_flag_wins_over_set_and_a_bad_value_names_what_was_given(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "train", lambda *a, **k: {"step": 0})
    code, _, err = run_cli_streams(
        "train", "--preset", "folder", "--data", tmp_path, "--image-size", "8", "--out", tmp_path / "run",
        "--set", "model.attention_resolutions=[16]", "--set", "data.image_size=32",
    )  # fmt: skip
    assert code == 2 and "image_size 8" in err and "32" not in err.replace("[16]", ""), err
