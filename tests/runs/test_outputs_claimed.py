"""Outputs are claimed atomically: of two commands writing the same new output only the first succeeds, the other
fails with one `error: ... exists` line, and no file is half-written or replaced."""

import threading

import numpy as np
import pytest

from ddpmkit import UserError
from ddpmkit.files import TEMP_FILE, write_bytes, write_text
from ddpmkit.runs import check_output
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
