"""Folder data: what is converted or skipped is said in one line; a decompression bomb is refused before decoding."""

import time

import numpy as np
import pytest
from PIL import Image

from ddpmkit import UserError
from ddpmkit.data import load_image_folder


def test_conversions_and_skipped_gifs_are_said_once(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "b.jpg")
    Image.fromarray((rng.integers(0, 65536, (12, 12))).astype(np.uint16)).save(tmp_path / "c.png")
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "d.png", transparency=0)
    Image.fromarray(rgb).save(tmp_path / "e.GIF")
    data = load_image_folder(tmp_path, 8)
    assert len(data) == 4 and data.data.shape[1] == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0] == f"note: skipped 1 GIF file(s) under {tmp_path} (still images only: convert them to PNG)"
    assert err[1] == (
        f"note: converted 3 of 4 images under {tmp_path}: 1 16/32-bit to 8 bits (v * 255 / 65535), "
        f"1 CMYK to RGB, 1 alpha dropped"
    )


def test_plain_images_say_nothing(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    load_image_folder(tmp_path, 8)
    assert capsys.readouterr().err == ""


def test_a_small_file_of_a_huge_image_is_refused_before_decoding(tmp_path, capsys):
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    start = time.monotonic()
    with pytest.raises(UserError, match=r"bomb.png is 12000x12000 \(137 MP\), over the 64 MP ddpmkit decodes"):
        load_image_folder(tmp_path, 32)
    assert time.monotonic() - start < 10 and capsys.readouterr().err == ""  # no Pillow warning either


def test_an_unreadable_folder_is_said(tmp_path, capsys, monkeypatch):
    import os

    for name in ("ok", "locked"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name / "a.png")
    real = os.scandir

    def scandir(path):  # as for a folder without read permission (root reads everything, so simulated)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert len(load_image_folder(tmp_path, 8)) == 1
    assert capsys.readouterr().err.strip() == (
        f"note: skipped 1 folder(s) under {tmp_path} that could not be read, first {tmp_path / 'locked'}"
    )
