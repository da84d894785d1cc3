"""``ddpmkit report RUN``: one self-contained HTML page about a run (no script, no network, images inline).

The page has these parts, each a ``<section>`` with a fixed id: ``summary``, ``loss`` (the loss
and learning-rate curves as inline SVG), ``samples`` (the grids the trainer drew during training),
``trajectory`` (x_t and the predicted x0 along the reverse process of 4 new samples: seeds 0-3, the
run's sampler, at most 50 network calls), ``evaluation`` (every ``RUN/eval/*.json``: ``ddpmkit eval RUN``
records each result there, see :func:`record_eval`), ``posthoc-ema`` (only where ``ddpmkit ema RUN --sweep``
kept a table in RUN/ema_snapshots: each metric's score against sigma_rel, the best width marked), ``config``
(``config.yaml``) and ``environment``.
"""

from __future__ import annotations

import base64
import datetime
import json
import platform
import statistics
import tempfile
from html import escape
from pathlib import Path

import numpy
import torch
import yaml

from ..errors import UserError
from ..files import write_text
from ..images import make_grid, save_png, tile_scale, to_uint8
from ..options import Device
from ..train.metrics import read_metrics
from ..train.runtime import cpu_threads
from ..version import __version__
from .charts import line_chart, smooth
from .outputs import check_output, write_trajectory
from .run import Run, describe_checkpoint
from .rundir import RunDir
from .sampling import default_steps

__all__ = ["write_report", "build_report", "record_eval", "MAX_GRIDS", "TRAJECTORY_CALLS"]

MAX_GRIDS = 12  # sample grids shown, evenly chosen over training (the first and last always)
TRAJECTORY_CALLS = 50  # at most this many network calls for the trajectory strip
CONSISTENCY_CALLS = (1, 2, 4)  # a consistency model's rows in place of the trajectory

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: 0.15em 0.8em 0.15em 0; text-align: left; vertical-align: top; }
th { color: #555; font-weight: 600; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
.grids { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; } figcaption { color: #555; }
img.px { image-rendering: pixelated; } .chart text { font-size: 12px; fill: #444; } .note { color: #666; }
"""


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    trajectory: bool = True,
    device: Device = "auto",
    force: bool = False,
) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default RUN/report.html); everything is checked first."""
    run_dir = _check_run_dir(Path(run_dir))
    out = check_output(Path(out) if out else RunDir(run_dir).report, force, (".html", ".htm"), asks="an .html")
    return write_text(out, build_report(run_dir, trajectory=trajectory, device=device))


def _check_run_dir(path: Path) -> Path:
    if not path.is_dir():
        raise UserError(f"{str(path)!r} is not a run directory" + ("" if path.exists() else " (it does not exist)"))
    if not RunDir(path).config.is_file():
        raise UserError(f"{str(path)!r} is not a run directory: it has no config.yaml")
    return path


def build_report(run_dir: Path, *, trajectory: bool = True, device: Device = "auto") -> str:
    """The report's HTML."""
    config_text = _read_text(RunDir(run_dir).config)
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        config = {}
    records = _records(run_dir)
    name = config.get("name") if isinstance(config, dict) else None
    sections = [
        _section("summary", "Summary", _summary(run_dir, config, records)),
        _section("loss", "Training curves", _curves(records)),
        _section("samples", "Samples during training", _grids(run_dir)),
        _section(
            "trajectory",
            "Trajectory",
            _trajectory(run_dir, device) if trajectory else '<p class="note">not drawn (--no-trajectory)</p>',
        ),
        _section("evaluation", "Evaluation", _evaluation(run_dir)),
        *_posthoc_ema(run_dir),
        _section("config", "Config", f"<pre>{escape(config_text)}</pre>"),
        _section("environment", "Environment", _table(_environment(device))),
    ]
    title = f"ddpmkit report: {name or run_dir.name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n"
        f'<p class="note">{escape(str(run_dir))}</p>\n' + "\n".join(sections) + "\n</body>\n</html>\n"
    )


def _section(ident: str, heading: str, body: str) -> str:
    return f'<section id="{ident}">\n<h2>{escape(heading)}</h2>\n{body}\n</section>'


def _table(rows: dict) -> str:
    cells = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {str(path)!r}: {e}") from None


def _records(run_dir: Path) -> list[dict]:
    path = RunDir(run_dir).metrics
    return read_metrics(path) if path.exists() else []


def _png(data: bytes, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img class="px" alt="{escape(alt)}"{size} src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _summary(run_dir: Path, config: dict, records: list[dict]) -> str:
    rows: dict = {}
    try:
        rows.update(describe_checkpoint(run_dir))
    except UserError as e:
        rows["checkpoint"] = f"none readable ({e})"
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
    if losses:
        rows["final loss"] = f"{losses[-1]:.4g} (smoothed {_smoothed(losses)[-1]:.4g})"
    speeds = [r["images_per_s"] for r in records if isinstance(r.get("images_per_s"), (int, float))]
    if speeds:
        rows["images/s"] = f"{statistics.median(speeds):.0f} (median of {len(speeds)} log intervals)"
    times = [r["time"] for r in records if isinstance(r.get("time"), (int, float))]
    if len(times) > 1:
        rows["training time"] = f"{(times[-1] - times[0]) / 60:.1f} min between the first and last log lines"
    return _table(rows)


def _smoothed(losses: list[float]) -> list[float]:
    """The loss averaged over about 1/30 of the run's log lines."""
    return smooth(losses, 1 - 1 / max(1.0, len(losses) / 30))


def _curves(records: list[dict]) -> str:
    rows = [r for r in records if isinstance(r.get("step"), (int, float)) and isinstance(r.get("loss"), (int, float))]
    if not rows:
        return '<p class="note">no metrics.jsonl records with a loss</p>'
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    loss = line_chart(
        steps,
        [("raw", losses, "#9ecae1", 1), ("smoothed", _smoothed(losses), "#08519c", 2.5)],
        log_y=True,
        y_label="loss (log scale)",
        title="training loss",
    )
    lrs = [r.get("lr") if isinstance(r.get("lr"), (int, float)) else None for r in rows]
    lr = line_chart(steps, [("learning rate", lrs, "#d94801", 2)], y_label="learning rate", title="learning rate")
    return f"{loss}\n{lr}"


def _grids(run_dir: Path) -> str:
    files = RunDir(run_dir).grids()
    if not files:
        return '<p class="note">no sample grids in samples/ (train.sample_every: 0?)</p>'
    if len(files) > MAX_GRIDS:
        files = [files[round(i * (len(files) - 1) / (MAX_GRIDS - 1))] for i in range(MAX_GRIDS)]
    figures = []
    for f in files:
        step = int(f.stem.split("_")[-1]) if f.stem.split("_")[-1].isdigit() else f.stem
        figures.append(
            f"<figure>{_png(f.read_bytes(), f'samples at step {step}', 220)}"
            f"<figcaption>step {step}</figcaption></figure>"
        )
    return '<div class="grids">' + "".join(figures) + "</div>"


def _trajectory(run_dir: Path, device: Device) -> str:
    if RunDir(run_dir).latest_checkpoint() is None:
        return '<p class="note">no checkpoint to draw from</p>'
    run = Run.load(run_dir, device=device)
    if not run.is_image:
        return '<p class="note">this run models 2-D points: no images to follow</p>'
    if run.config.distill is not None:
        return _consistency_calls(run)
    sc = run.config.sample
    calls = default_steps(sc.sampler, sc) or run.diffusion.num_timesteps
    samples = run.sample(4, steps=min(calls, TRAJECTORY_CALLS), seed=0, trajectory=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_trajectory(Path(tmp) / "t.png", samples).read_bytes()
    assert samples.trajectory is not None  # asked for above
    steps = ", ".join(str(t) for t, _, _ in samples.trajectory)
    return (
        f"<p>4 samples (seeds 0-3), {escape(samples.sampler)} with {samples.steps} network calls, EMA "
        f"weights of step {run.step}. Per sample: x_t (upper row) and the predicted x0 (lower row) at t = "
        f"{steps}.</p>\n{_png(data, 'trajectory strip')}"
    )


def _consistency_calls(run: Run) -> str:
    """A consistency model has no trajectory: its samples of seeds 0-3 at 1, 2 and 4 calls, a row each."""
    rows = [to_uint8(run.sample(4, steps=calls, seed=0).x) for calls in CONSISTENCY_CALLS]
    grid = make_grid(numpy.concatenate(rows), nrow=4, padding=2, scale=tile_scale(rows[0].shape[2]))
    with tempfile.TemporaryDirectory() as tmp:
        data = save_png(Path(tmp) / "calls.png", grid).read_bytes()
    return (
        f"<p>A consistency model makes a few jumps, not a trajectory: 4 samples (seeds 0-3) at "
        f"{', '.join(map(str, CONSISTENCY_CALLS))} network calls (a row each), EMA weights of step {run.step}.</p>\n"
        f"{_png(data, 'samples at 1, 2 and 4 calls')}"
    )


def record_eval(run_dir: str | Path, result: dict, metrics: list[str], against: str) -> Path:
    """Keep an evaluation of a run directory as ``RUN/eval/<metrics>-<against>-n<num>-step<step>.json`` (a
    repeat of the same measurement replaces its file), where the report finds it."""
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(against).stem) or "ref"
    name = f"{'_'.join(metrics)}-{tag}-n{result.get('num')}-step{result.get('step')}.json"
    path = RunDir(run_dir).eval / name
    try:
        path.parent.mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {path.parent}: {e.strerror or e}") from None
    write_text(path, json.dumps(result, indent=2, allow_nan=False) + "\n")
    return path


def _evaluation(run_dir: Path) -> str:
    files = sorted(RunDir(run_dir).eval.glob("*.json"))
    if not files:
        return (
            '<p class="note">no results in eval/ yet: <code>ddpmkit eval RUN</code> (bits/dim) and '
            "<code>ddpmkit eval RUN --metric fid kid pr</code> record theirs there</p>"
        )
    parts = []
    for f in files:
        try:
            result = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            parts.append(f'<h3>{escape(f.name)}</h3><p class="note">unreadable: {escape(str(e))}</p>')
            continue
        if not isinstance(result, dict):
            parts.append(f'<h3>{escape(f.name)}</h3><p class="note">not a JSON object</p>')
            continue
        shown = {
            k: (f"{v:.5g}" if isinstance(v, float) else v)
            for k, v in result.items()
            if v is None or isinstance(v, (str, int, float, bool))
        }
        parts.append(f"<h3>{escape(f.name)}</h3>{_table(shown)}")
    return "\n".join(parts)


def _posthoc_ema(run_dir: Path) -> list[str]:
    """The section of the run's EMA width sweeps (RUN/ema_snapshots/sweep-*.json); none without a sweep."""
    files = RunDir(run_dir).list_ema_sweeps()
    if not files:
        return []
    return [_section("posthoc-ema", "Post-hoc EMA", "\n".join(_sweep(f) for f in files))]


def _sweep(path: Path) -> str:
    """One sweep's score against sigma_rel (the best width marked and named) and its rows."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        key, best, rows = table["ranked_by"], float(table["best_sigma_rel"]), table["rows"]
        xs, ys = [float(r["sigma_rel"]) for r in rows], [float(r[key]) for r in rows]
        fits = [f"{float(r['fit_error']):.2g}" for r in rows]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        return f'<h3>{escape(path.name)}</h3><p class="note">not a sweep table: {escape(str(e))}</p>'
    named = f"best sigma_rel {best:.4f}"  # as `ddpmkit ema --sweep` names it
    order = "higher" if table.get("higher_is_better") else "lower"
    chart = line_chart(
        xs,
        [(key, ys, "#08519c", 2), (named, [y if x == best else None for x, y in zip(xs, ys)], "#d94801", 2)],
        x_label="sigma_rel",
        x_min_step=0,
        y_label=f"{key} ({order} is better)",
        title=f"{key} against the EMA width",
    )
    head = f"<tr><th>sigma_rel</th><th>{escape(key)}</th><th>fit error</th><th></th></tr>"
    cells = "".join(
        f"<tr><td>{x:.4f}</td><td>{y:.5g}</td><td>{fit}</td><td>{'best' if x == best else ''}</td></tr>"
        for x, y, fit in zip(xs, ys, fits)
    )
    return (
        f"<h3>{escape(str(table.get('metric', key)))}</h3>\n<p>{escape(key)} of each width rebuilt at step "
        f"{escape(str(table.get('step')))} (num {escape(str(table.get('num')))}, seed {escape(str(table.get('seed')))}"
        f"); {escape(named)}: <code>ddpmkit ema RUN --sigma-rel {best:g}</code> writes its run.</p>\n"
        f"{chart}\n<table>{head}{cells}</table>"
    )


def _environment(device: str) -> dict:
    cuda = torch.cuda.is_available() and device != "cpu"
    where = f"cuda ({torch.cuda.get_device_name(0)})" if cuda else f"cpu ({cpu_threads()})"
    return {
        "ddpmkit": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device (trajectory)": where,
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
