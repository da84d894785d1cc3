"""Outputs are claimed atomically: of two commands writing the same new output only the first succeeds, the other
fails with one `error: ... exists` line, and no file is half-written or replaced."""

import threading

import numpy as np
import pytest

from ddpmkit import UserError
from ddpmkit.files import TEMP_FILE, write_bytes, write_text
from ddpmkit.runs import check_output
from ddpmkit.runs.outputs import claimed_folder
from helpers import assert_user_error, run_cli


def test_the_second_of_two_checked_writes_finds_the_first_file(tmp_path):
    out = tmp_path / "r.json"
    first, second = check_output(out, False, (".json",)), check_output(out, False, (".json",))
    write_text(first, "first\n")
    with pytest.raises(UserError, match="already exists"):
        write_text(second, "second\n")
    assert out.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    write_text(check_output(out, True, (".json",)), "forced\n")  # --force replaces it
    assert out.read_text() == "forced\n"


def test_of_writers_racing_for_one_output_exactly_one_succeeds(tmp_path):
    out, n = tmp_path / "s.npz", 8
    for _ in range(n):
        check_output(out, False, (".npz",))
    start, results = threading.Barrier(n), [None] * n

    def writer(i):
        start.wait()
        try:
            write_bytes(out, bytes([i]) * 1_000_000)
            results[i] = "ok"
        except UserError as e:
            results[i] = str(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1, results
    assert all("already exists" in r for r in results if r != "ok")
    data = out.read_bytes()
    assert data == bytes([results.index("ok")]) * 1_000_000  # whole, and the winner's
    assert not [p for p in tmp_path.iterdir() if TEMP_FILE.match(p.name)]


def test_sample_loses_to_a_command_that_wrote_its_output_meanwhile(tiny_run, tmp_path, monkeypatch):
    from ddpmkit.runs.run import Run

    out, sample = tmp_path / "same.npz", Run.sample

    def sample_while_another_writes(self, *args, **kwargs):
        np.savez(out, other=np.zeros(1))  # the other command, done first
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(Run, "sample", sample_while_another_writes)
    code, err = run_cli("sample", tiny_run, "--num", "2", "--steps", "2", "--out", out, "--no-progress")
    assert_user_error(code, err, "same.npz", "already exists")
    assert list(np.load(out)) == ["other"]


@pytest.mark.parametrize("existing", [False, True])
def test_a_second_claim_of_an_output_folder_fails_while_the_first_holds_it(tmp_path, existing):
    out = tmp_path / "export"
    if existing:
        out.mkdir()  # an empty folder is a fine output, claimed all the same
    with claimed_folder(check_output(out, False, folder=True), False):
        with pytest.raises(UserError, match="already exists"):
            with claimed_folder(check_output(out, False, folder=True), False):
                pytest.fail("both commands hold the folder")
        (out / "model.safetensors").write_bytes(b"first")
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]  # the claim's marker is gone
    with pytest.raises(UserError, match="already exists"):  # done, it is an existing output
        with claimed_folder(out, False):
            pass


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_folder_write_leaves_no_half_written_folder(tmp_path, existing):
    out = tmp_path / "export"
    if existing:
        out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with claimed_folder(out, False):
            (out / "unet").mkdir()
            (out / "unet" / "config.json").write_text("{}")
            raise KeyboardInterrupt
    assert (out.is_dir() and not any(out.iterdir())) if existing else not out.exists()


def test_export_loses_to_a_command_holding_its_folder_and_a_failed_export_leaves_none(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    import ddpmkit.runs.export as export

    out = tmp_path / "weights"
    with claimed_folder(out, False):  # the other command, still writing
        code, err = run_cli("export", tiny_run, "--format", "safetensors", "--out", out)
        assert_user_error(code, err, "weights", "already exists")
    assert not any(out.iterdir())  # the other command's folder, untouched
    out = tmp_path / "new"

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_text", full_disk)  # model.safetensors is written, config.json is not
    with pytest.raises(OSError):
        export.export_run(tiny_run, "safetensors", out)
    assert not out.exists()
