"""Fault injection: interrupt ``ddpmkit train`` at random moments, resume, and check that nothing was lost.

    python benchmarks/fault_injection.py [--kills 20] [--terms 10] [--ints 0] [--steps 30] [--seed 0]
                                         [--jobs 1] [--workdir DIR] [-v]

A tiny digits run (0.18M parameters, batch 16, fp32 on the CPU, a checkpoint every 2 steps, a
metrics line every step) is trained once without interruption as the reference. Each trial then
trains it again in a fresh directory, sends a signal (SIGKILL, SIGTERM or SIGINT) at a random,
seeded moment (``pick_moment``) -- during start-up (SIGKILL only), after a training step, or as a
checkpoint's temporary file appears, so inside a save -- and goes on with ``ddpmkit train --out
DIR --resume`` until the run is complete (a fresh start when it was stopped before its first
checkpoint). About a third of the trials are interrupted twice: their first resume gets the same
signal too. ``--jobs`` runs trials side by side (it pays only on an idle machine).

Each trial is then checked for:

- runs lost: the last resume failed, or the run never reached its last step;
- mismatches: the final checkpoint's model or EMA weights are not bit-equal to the reference's;
- half-written: a checkpoint that does not load, or a metrics file that does not read;
- stray files: a temporary file (``ddpmkit.files.TEMP_FILE``, or any ``*.tmp``) left in the run;
- repeated / missing steps: a step logged twice in ``metrics.jsonl``, or a step never logged;
- tracebacks: "Traceback" on any stderr of the trial;
- SIGTERM and SIGINT: exit code 128 + signal (wrong exit code), the line ``interrupted at step N:
  checkpoint written, --resume continues`` on stderr and the checkpoint of step N on disk
  (without checkpoint).

Prints one line per trial with ``-v``, then a summary table; exits 0 when every bad count is 0,
else 1 (2 when the reference run itself fails). Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ddpmkit.errors import UserError
from ddpmkit.files import TEMP_FILE
from ddpmkit.train.metrics import read_metrics

EVERY = 2  # checkpoint_every
TIMEOUT = 300  # seconds any one ddpmkit process may take
POLL = 0.001  # seconds between looks at the run directory
TINY = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny_digits.yaml"  # the tests' tiny digits
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
INTERRUPTED = re.compile(r"interrupted at step (\d+): checkpoint written, --resume continues")
BAD = [
    "runs lost",
    "mismatches",
    "half-written",
    "stray files",
    "repeated steps",
    "missing steps",
    "tracebacks",
    "wrong exit code",
    "without checkpoint",
]


def tiny_config(steps: int) -> dict:
    """The tests' tiny digits config (TINY), with ``steps`` steps, a metrics line every step, on the CPU."""
    config = yaml.safe_load(TINY.read_text())
    config["train"].update(steps=steps, log_every=1, checkpoint_every=EVERY, device="cpu")
    return config


@dataclass
class Moment:
    """When to send the signal: ``kind`` "start" (``n`` seconds after launch), "step" (once step ``n``
    is logged) or "save" (as the ``n``-th new checkpoint temp file appears); then ``delay`` seconds more."""

    kind: str
    n: float
    delay: float = 0.0

    def __str__(self) -> str:
        what = f"{self.n:.2f}s" if self.kind == "start" else f"{self.n:g}"
        return f"{self.kind} {what}" + (f" +{self.delay * 1e3:.0f}ms" if self.delay else "")


@dataclass
class Attempt:
    """One ``ddpmkit train`` process of a trial."""

    resume: bool
    moment: Moment | None
    signalled: bool
    returncode: int
    stderr: str
    checkpoint: int | None  # the latest checkpoint's step once the process had ended
    temps: int  # checkpoint temp files in the run once it had ended (a save cut off)


@dataclass(frozen=True)
class Setup:
    """What every trial shares."""

    steps: int
    seed: int
    workdir: Path
    config: Path  # the tiny config file
    startup: float  # seconds from launch to the reference's first metrics line


@dataclass
class Trial:
    """One run directory: its processes, and what was wrong with it in the end (names from BAD)."""

    number: int
    sig: signal.Signals
    attempts: list[Attempt] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ looking at a run directory


def checkpoint_step(run: Path) -> int | None:
    """The step of the run's latest checkpoint, or None when it has none."""
    folder = run / "checkpoints"
    steps = [int(m.group(1)) for m in map(STEP_FILE.match, os.listdir(folder)) if m] if folder.is_dir() else []
    return max(steps, default=None)


def temp_names(run: Path) -> set[str]:
    """Names of the checkpoint temp files in the run's checkpoints/ right now."""
    try:
        return {name for name in os.listdir(run / "checkpoints") if TEMP_FILE.match(name)}
    except FileNotFoundError:
        return set()


def last_logged(run: Path, since: float) -> int | None:
    """The step of the last complete metrics line, when it was written after ``since`` (time.time())."""
    try:
        text = (run / "metrics.jsonl").read_text(encoding="utf-8")
        record = json.loads(text.splitlines()[-1]) if text.endswith("\n") else {}
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record.get("step") if record.get("time", 0) >= since else None


def stray_files(run: Path) -> list[str]:
    """Temp files left in the run: TEMP_FILE names in checkpoints/, any ``*.tmp`` anywhere."""
    found = {f"checkpoints/{name}" for name in temp_names(run)}
    found |= {str(p.relative_to(run)) for p in run.rglob("*.tmp")}
    return sorted(found)


# ------------------------------------------------------------------ running ddpmkit train


def train_command(run: Path, config: Path, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "ddpmkit", "train", "--out", str(run), "--no-progress"]
    return command + (["--resume"] if resume else ["--preset", "digits", "--config", str(config)])


def poll(proc: subprocess.Popen, condition: Callable[[], bool]) -> bool:
    """Wait until ``condition()`` holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL)
    return False


def reached(moment: Moment, run: Path, launched: float) -> Callable[[], bool]:
    """The condition that says ``moment`` has come, for a process launched at ``launched`` (time.time())."""
    if moment.kind == "start":
        return lambda: time.time() >= launched + moment.n
    if moment.kind == "step":
        return lambda: (last_logged(run, launched) or 0) >= moment.n
    old, seen = temp_names(run), set()  # strays of an earlier process do not count

    def save_started() -> bool:
        seen.update(temp_names(run) - old)
        return len(seen) >= moment.n

    return save_started


def launch(run: Path, config: Path, resume: bool, moment: Moment | None, sig: signal.Signals, log: Path) -> Attempt:
    """Run ``ddpmkit train`` once; send ``sig`` at ``moment`` (None: let it finish)."""
    launched = time.time()
    with open(log, "w+", encoding="utf-8") as err:
        proc = subprocess.Popen(train_command(run, config, resume), stdout=subprocess.DEVNULL, stderr=err)
        signalled = False
        if moment is not None and poll(proc, reached(moment, run, launched)):
            time.sleep(moment.delay)
            signalled = proc.poll() is None
            if signalled:
                proc.send_signal(sig)
        try:
            returncode = proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
        err.seek(0)
        return Attempt(resume, moment, signalled, returncode, err.read(), checkpoint_step(run), len(temp_names(run)))


# ------------------------------------------------------------------ one trial


def pick_moment(rng: random.Random, sig: signal.Signals, done: int, steps: int, startup: float) -> Moment | None:
    """A random moment in a run that goes on from step ``done``; None when too little is left.

    SIGKILL: 1/6 during start-up, 1/3 inside a save, 1/2 up to 0.1 s after a step was logged, the
    end of the run included. SIGTERM and SIGINT: half inside a save, half after a step, only while
    the loop trains and at least 3 steps before its end, so that they must stop the run.
    """
    last = steps if sig == signal.SIGKILL else steps - 3
    saves = [s for s in range(done + 1, last + 1) if s % EVERY == 0 or s == steps]
    roll = rng.random()
    if sig == signal.SIGKILL and roll < 1 / 6:
        return Moment("start", rng.uniform(0, startup))
    if roll < 1 / 2 and saves:
        return Moment("save", rng.randint(1, len(saves)), rng.uniform(0, 0.005))
    if done + 1 <= last:
        return Moment("step", rng.randint(done + 1, last), rng.uniform(0, 0.1))
    return None


def run_trial(number: int, sig: signal.Signals, setup: Setup) -> Trial:
    """Train in a fresh directory, interrupt it once or twice, resume until it is complete, check it."""
    trial, run = Trial(number, sig), setup.workdir / f"trial{number:03d}"
    rng = random.Random(f"{setup.seed}/{number}")  # a trial's moments do not depend on the others
    interruptions = 2 if rng.random() < 1 / 3 else 1
    while True:
        done = checkpoint_step(run)
        moment = pick_moment(rng, sig, done or 0, setup.steps, setup.startup) if interruptions else None
        log = setup.workdir / f"trial{number:03d}.{len(trial.attempts)}.stderr"
        attempt = launch(run, setup.config, done is not None, moment, sig, log)
        trial.attempts.append(attempt)
        if not attempt.signalled:
            break
        interruptions -= 1
    problems = check_run(run, setup.steps, setup.workdir / "reference", attempt.returncode) + check_signals(trial)
    trial.problems = sorted(set(problems), key=BAD.index)
    return trial


# ------------------------------------------------------------------ checks


def same(a, b) -> bool:
    """Bit-equal state dicts (nested dicts of tensors and plain values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def load(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception:
        return None


def check_checkpoints(run: Path, steps: int, reference: Path) -> list[str]:
    """Half-written checkpoints, and the final one's weights against the reference's."""
    problems = []
    paths = sorted(p for p in (run / "checkpoints").glob("step_*.pt")) if (run / "checkpoints").is_dir() else []
    loaded = {p.name: load(p) for p in paths}
    if any(ckpt is None for ckpt in loaded.values()):
        problems.append("half-written")
    final, ref = loaded.get(f"step_{steps:08d}.pt"), load(reference / "checkpoints" / f"step_{steps:08d}.pt")
    if final is not None and not all(same(final[k], ref[k]) for k in ("model", "ema")):
        problems.append("mismatches")
    return problems


def check_metrics(run: Path, steps: int) -> list[str]:
    """Every step 1..steps logged exactly once (log_every is 1)."""
    try:
        logged = Counter(r.get("step") for r in read_metrics(run / "metrics.jsonl"))
    except UserError:
        return ["half-written"]
    problems = ["repeated steps"] if any(n > 1 for n in logged.values()) else []
    return problems + (["missing steps"] if set(range(1, steps + 1)) - set(logged) else [])


def check_run(run: Path, steps: int, reference: Path, returncode: int) -> list[str]:
    """What is wrong with a trial's run directory after its last process (which exited with ``returncode``)."""
    if returncode != 0 or checkpoint_step(run) != steps:
        return ["runs lost"] + (["stray files"] if run.is_dir() and stray_files(run) else [])
    problems = check_checkpoints(run, steps, reference) + check_metrics(run, steps)
    return problems + (["stray files"] if stray_files(run) else [])


def check_signals(trial: Trial) -> list[str]:
    """Tracebacks, and how the processes stopped by SIGTERM / SIGINT ended."""
    problems = ["tracebacks"] if any("Traceback" in a.stderr for a in trial.attempts) else []
    for a in trial.attempts:
        if a.signalled and trial.sig != signal.SIGKILL:
            if a.returncode != 128 + trial.sig:
                problems.append("wrong exit code")
            said = INTERRUPTED.findall(a.stderr)
            if not said or int(said[-1]) != a.checkpoint:
                problems.append("without checkpoint")
    return problems


# ------------------------------------------------------------------ the report


def describe(trial: Trial, total: int) -> str:
    """One line: what each process of the trial got, and what was wrong."""
    parts = []
    for a in trial.attempts:
        what = ("resume" if a.resume else "start") + (f" [{a.moment}]" if a.signalled else "")
        parts.append(f"{what} rc {a.returncode}" + (f" left {a.temps} .tmp" if a.temps else ""))
    verdict = ", ".join(trial.problems) or "ok"
    return f"trial {trial.number:>3}/{total} {trial.sig.name}: {'; '.join(parts)} -> {verdict}"


def summary(trials: list[Trial], steps: int, seconds: float) -> int:
    """Print the table; the number of bad counts above 0."""
    counts = Counter(p for t in trials for p in t.problems)
    by_signal = Counter(t.sig.name for t in trials)
    signalled = sum(a.signalled for t in trials for a in t.attempts)
    cut = sum(a.signalled and a.temps > 0 for t in trials for a in t.attempts)
    stopping = [t for t in trials if t.sig != signal.SIGKILL and any(a.signalled for a in t.attempts)]
    correct = sum(not {"wrong exit code", "without checkpoint"} & set(t.problems) for t in stopping)
    kinds = ", ".join(f"{n} {name}" for name, n in by_signal.items())
    print(f"\n| fault injection: {len(trials)} trials ({kinds}), {steps} steps | count |")
    print("| --- | ---: |")
    print(f"| signals sent | {signalled} |")
    print(f"| ... that cut a save (left a temp file) | {cut} |")
    for name in BAD:
        print(f"| {name} | {counts[name]} |")
    if stopping:
        print(f"| SIGTERM/SIGINT exits correct | {correct}/{len(stopping)} |")
    print(f"| seconds per trial | {seconds / max(len(trials), 1):.1f} |")
    bad = sum(counts[name] > 0 for name in BAD)
    print("result: ok" if bad == 0 else f"result: FAILED ({', '.join(n for n in BAD if counts[n])})")
    return bad


def train_reference(workdir: Path, config: Path) -> float:
    """Train the uninterrupted reference run; return its start-up time (launch to the first metrics line)."""
    run, launched = workdir / "reference", time.time()
    with open(workdir / "reference.stderr", "w+", encoding="utf-8") as err:
        proc = subprocess.Popen(train_command(run, config, False), stdout=subprocess.DEVNULL, stderr=err)
        poll(proc, lambda: last_logged(run, launched) is not None)
        startup = time.time() - launched
        if proc.wait(TIMEOUT) != 0:
            err.seek(0)
            raise RuntimeError(f"the reference run failed:\n{err.read()}")
    return startup


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="trials interrupted by SIGKILL")
    p.add_argument("--terms", type=int, default=10, help="trials interrupted by SIGTERM")
    p.add_argument("--ints", type=int, default=0, help="trials interrupted by SIGINT")
    p.add_argument("--steps", type=int, default=30, help="training steps of each run (at least 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the moments")
    p.add_argument("--jobs", type=int, default=1, help="trials at a time (each process trains on 2 threads)")
    p.add_argument("--workdir", type=Path, help="keep the run directories and stderr logs here (default: a temp dir)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per trial")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.steps < 4 or args.jobs < 1:
        print("error: --steps must be at least 4 and --jobs at least 1", file=sys.stderr)
        return 2
    plan = [signal.SIGKILL] * args.kills + [signal.SIGTERM] * args.terms + [signal.SIGINT] * args.ints
    with tempfile.TemporaryDirectory(prefix="fault_injection.") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "tiny.yaml"
        config.write_text(yaml.safe_dump(tiny_config(args.steps)))
        try:
            setup = Setup(args.steps, args.seed, workdir, config, train_reference(workdir, config))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        start, trials = time.monotonic(), []
        with ThreadPoolExecutor(args.jobs) as pool:
            for trial in pool.map(lambda numbered: run_trial(*numbered, setup), enumerate(plan, start=1)):
                trials.append(trial)
                if args.verbose:
                    print(describe(trial, len(plan)), flush=True)
        bad = summary(trials, args.steps, time.monotonic() - start)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
