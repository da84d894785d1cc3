"""ddpmkit report: a self-contained HTML page; its charts' maths; bad input; the page in headless Chromium."""

import copy
import io
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from ddpmkit.cli import main
from ddpmkit.runs.charts import line_chart, nice_ticks, smooth
from ddpmkit.runs.report import write_report

PARTS = ("summary", "loss", "samples", "trajectory", "evaluation", "config", "environment")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny digits run with 3 sample grids, a metrics line per step and a bits/dim result in eval/."""
    from conftest import TINY_DIGITS
    from ddpmkit.config import load_config
    from ddpmkit.files import write_text
    from ddpmkit.runs import train

    over = copy.deepcopy(TINY_DIGITS)
    over["train"].update(steps=6, sample_every=2, log_every=1, checkpoint_every=0, device="cpu")
    over["sample"].update(sampler="ddim", steps=10)
    path = tmp_path_factory.mktemp("report") / "run"
    train(load_config("digits", overrides=over), path, progress=False, log=None)
    # what `ddpmkit eval RUN --metric bpd --out RUN/eval/bpd.json` writes (its numbers are tested elsewhere)
    result = {"metric": "bpd", "bpd": 5.14709482, "stderr": 0.034, "num": 200}
    write_text(path / "eval" / "bpd.json", json.dumps(result))
    write_text(path / "eval" / "broken.json", "{")
    return path


@pytest.fixture(scope="module")
def report(run_dir):
    return write_report(run_dir).read_text()


def test_the_page_has_every_part_and_fetches_nothing(run_dir, report):
    for part in PARTS:
        assert f'<section id="{part}">' in report
    assert "http" not in report and "<script" not in report and "<link" not in report
    assert not re.search(r"""(src|href)\s*=\s*(?!["']data:image/png;base64,)""", report)  # only inline images
    grids = re.search(r'<section id="samples">(.*?)</section>', report, re.S).group(1)
    assert grids.count("data:image/png;base64,") == 3 and "step 6" in grids  # steps 2, 4, 6
    assert re.search(r'<section id="trajectory">.*data:image/png', report, re.S)
    evaluation = re.search(r'<section id="evaluation">(.*?)</section>', report, re.S).group(1)
    assert "<td>5.1471</td>" in evaluation and "broken.json" in evaluation and "unreadable" in evaluation
    curve = re.search(r'<polyline class="series" points="([^"]*)"', report).group(1)
    assert len(curve.split()) == 6  # one point per metrics line


def test_images_are_the_run_files_themselves(run_dir, report):
    import base64

    from PIL import Image

    first = re.search(r'alt="samples at step 2"[^>]*src="data:image/png;base64,([^"]+)"', report).group(1)
    assert base64.b64decode(first) == (run_dir / "samples" / "step_00000002.png").read_bytes()
    strip = re.search(r'alt="trajectory strip"[^>]*src="data:image/png;base64,([^"]+)"', report).group(1)
    # 10 kept steps x (4 samples x 2 rows) of 8 px images drawn 8x with 1 px padding
    assert Image.open(io.BytesIO(base64.b64decode(strip))).size == (10 * 65 + 1, 8 * 65 + 1)


def test_smoothing_and_ticks():
    assert smooth([3.0] * 5, 0.9) == pytest.approx([3.0] * 5)  # no start-up bias
    assert smooth([0.0, 1.0], 0.5) == pytest.approx([0.0, 1 / 1.5])  # (0.5 * 0.5 * 0 + 0.5) / (1 - 0.25)
    assert nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(0.013, 0.061, 4) == pytest.approx([0.02, 0.04, 0.06])  # steps of 0.02 >= 0.048 / 4


def test_a_log_axis_places_decades_evenly():
    svg = line_chart([0, 1, 2], [("loss", [1.0, 10.0, 100.0], "#000", 1)], log_y=True)
    pts = [tuple(map(float, p.split(","))) for p in re.search(r'points="([^"]*)"', svg).group(1).split()]
    ys = [y for _, y in pts]
    assert ys[0] > ys[1] > ys[2] and math.isclose(ys[0] - ys[1], ys[1] - ys[2], abs_tol=0.11)
    assert ">10<" in svg and ">100<" in svg  # decade ticks
    assert "no values" in line_chart([0], [("loss", [-1.0], "#000", 1)], log_y=True)


def axis_labels(svg):
    """(y tick labels, x tick labels) of a chart, as numbers."""
    ys = re.findall(r'text-anchor="end">([^<]+)</text>', svg)
    xs = re.findall(r'text-anchor="middle">([-\d.e+]+)</text>', svg)
    return [float(v) for v in ys], [float(v) for v in xs]


def test_one_point_is_a_marker_on_axes_around_it():
    svg = line_chart([4], [("learning rate", [1e-4], "#d94801", 2)], y_label="learning rate")
    assert svg.count('<circle class="point"') == 1  # a polyline of one point draws nothing
    ys, xs = axis_labels(svg)
    assert len(ys) >= 3 and all(5e-5 <= y <= 1.5e-4 for y in ys), ys  # around 1e-4, not from -1 to 1
    assert 4 in xs and all(x == int(x) for x in xs), xs  # whole steps only
    many = line_chart([0, 1, 2], [("lr", [1e-4] * 3, "#000", 1)])
    assert "<circle" not in many and all(5e-5 <= y <= 1.5e-4 for y in axis_labels(many)[0])  # a constant, too
    assert "<svg" not in line_chart([], [("loss", [], "#000", 1)])  # nothing to draw: a note, no empty axes
    assert "<svg" not in line_chart([1, 2], [("lr", [None, None], "#000", 1)])


@pytest.mark.parametrize("lines", [0, 1])
def test_a_report_of_zero_or_one_metrics_line_has_no_empty_chart(run_dir, tmp_path, lines):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    kept = (run / "metrics.jsonl").read_text().splitlines()[:lines]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    page = write_report(run, tmp_path / "r.html", trajectory=False).read_text()
    curves = re.search(r'<section id="loss">(.*?)</section>', page, re.S).group(1)
    if lines == 0:
        assert "<svg" not in curves and "no metrics.jsonl records" in curves
    else:
        assert curves.count("<svg") == 2 and curves.count('<circle class="point"') == 3  # raw, smoothed, lr
        assert all(y > 0 for y in axis_labels(curves.split("</svg>")[1])[0])  # the learning rate's axis


def test_bad_input_is_one_line_and_nothing_changes(run_dir, tmp_path, capsys):
    cases = [
        [str(tmp_path / "missing")],
        [str(tmp_path)],  # no such directory; a directory without config.yaml
        [str(run_dir), "--out", str(tmp_path)],  # --out is a directory
        [str(run_dir), "--out", str(tmp_path / "r.txt")],
        [str(run_dir), "--out", str(tmp_path / "no" / "r.html")],
    ]
    for args in cases:
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), args
    out = tmp_path / "r.html"
    out.write_text("mine")
    assert main(["report", str(run_dir), "--out", str(out), "--no-trajectory"]) == 2
    assert out.read_text() == "mine" and "already exists" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--out", str(out), "--no-trajectory", "--force"]) == 0
    assert "not drawn (--no-trajectory)" in out.read_text()


# ----------------------------------------------------------------------------- headless Chromium


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium on this machine (Debian's package chromium; .ci/run installs it)")


def _browse(page, tmp_path, *flags) -> subprocess.CompletedProcess:
    """Chromium on ``page`` with verbose logging (console messages and every file it loads go to stderr)."""
    args = [
        _chromium(),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=1",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *flags,
        page.as_uri(),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def _problems(log: str, page) -> list[str]:
    """Console messages, and any file the page made the browser load besides itself."""
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    fetched = re.findall(r"FileURLLoader::Start: (\S+)", log)
    return console + [f"fetched {url}" for url in fetched if url != page.as_uri()]


@pytest.mark.system
def test_the_checker_catches_a_bad_page(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="missing.png"><script>console.error("boom")</script></body></html>')
    problems = _problems(_browse(page, tmp_path, "--dump-dom").stderr, page)
    assert any("boom" in p for p in problems) and any("missing.png" in p for p in problems)


@pytest.mark.system
def test_the_report_renders_in_headless_chromium(run_dir, report, tmp_path):
    from PIL import Image

    page = run_dir / "report.html"
    dom = _browse(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _problems(dom.stderr, page) == []
    for part in PARTS:
        assert re.search(rf'<section id="{part}">\s*<h2>', dom.stdout), part
    assert dom.stdout.count("<svg") == 2 and dom.stdout.count("<img") == 4
    shot = tmp_path / "shot.png"
    taken = _browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1000,2400")
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20  # not blank
    blue = (pixels[..., 2] > 120) & (pixels[..., 0] < 60)  # the smoothed loss curve (#08519c) was drawn
    assert blue.sum() > 200


def test_ddpmkit_eval_records_its_result_in_the_run_for_the_report(run_dir, tmp_path, capsys):
    import shutil

    from ddpmkit.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["eval", str(run), "--num", "3", "--batch-size", "3", "--no-progress", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    kept = run / "eval" / "bpd-test-n3-step6.json"
    assert json.loads(kept.read_text()) == printed
    page = write_report(run, tmp_path / "r.html", trajectory=False).read_text()
    assert "bpd-test-n3-step6.json" in page and f"{printed['bpd']:.5g}" in page
