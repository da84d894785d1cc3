"""Sampling timesteps optimised for one trained model (``ddpmkit tune-steps``).

In the spirit of Align Your Steps (Sabour et al. 2024) and GITS (Chen et al. 2024): the K-call
grid of a deterministic sampler is chosen to bring its samples closest to a converged many-step
solution of the same probability-flow ODE from the same x_T. The search is a coordinate descent
in log-SNR: it starts from the best standard spacing, then moves one kept timestep at a time
halfway (then a quarter, an eighth, ...) towards either neighbour and keeps any move that lowers
the objective, the mean squared distance to the reference over a fixed set of draws. Fixed seeds
make it deterministic. Held-out draws (other seeds) check the result; where the tuned grid does
worse on them than its start, the start is kept.

The grid is saved as ``RUN/timesteps/<sampler>-<K>.json`` and ``Run.sample`` (and so ``ddpmkit
sample``) uses it whenever the sampler and the number of calls match and no spacing is named.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, TypedDict

import torch
from torch import Tensor

from ..errors import UserError
from ..files import write_text
from ..options import SamplerName, Spacing, check_choice, choices
from ..samplers import randn, seeded_generators
from ..sampling_options import SamplingOptions
from ..timestep_grids import interp, log_snr, sampling_timesteps
from ..validate import check_seed, int_in_range, positive_int
from .rundir import RunDir
from .sampling import parse_labels

__all__ = ["TUNABLE", "REFERENCE", "Tuned", "search_timesteps", "tune_steps", "tuned_path", "load_tuned", "describe"]

TUNABLE: tuple[SamplerName, ...] = ("ddim", "dpm++2m", "dpm++3m", "unipc-bh1", "unipc-bh2")  # deterministic


class Reference(TypedDict):
    """The sampler whose many-step solution stands for the exact ODE solution."""

    sampler: SamplerName
    steps: int
    spacing: Spacing


REFERENCE: Reference = {"sampler": "dpm++3m", "steps": 250, "spacing": "snr_root"}  # the converged ODE solution
HELDOUT_SEED = 1_000_000  # held-out draw i uses seed + HELDOUT_SEED + i
FORMAT = "ddpmkit tuned timesteps"


class Tuned(NamedTuple):
    """The result of a search: the grid, where it started, and the objective before and after."""

    timesteps: list[int]  # strictly decreasing kept indices, K of them
    start_spacing: Spacing  # the standard spacing the search started from
    start: float  # objective of the start grid on the tuning draws
    tuned: float  # objective of the result on the tuning draws
    evaluations: int  # objective evaluations (each is K network calls per draw)


def search_timesteps(
    objective: Callable[[list[int]], float],
    alphas_cumprod: Tensor,
    steps: int,
    rounds: int = 4,
    spacings: Sequence[Spacing] = choices(Spacing),
) -> Tuned:
    """Coordinate descent over the kept timesteps (the first stays where its spacing put it)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    T = abar.numel()
    int_in_range("tuned steps", steps, 2, T - 1)
    positive_int("rounds", rounds)
    seen: dict[tuple, float] = {}

    def cost(ts: list[int]) -> float:
        if tuple(ts) not in seen:
            seen[tuple(ts)] = float(objective(ts))
        return seen[tuple(ts)]

    starts = {sp: sampling_timesteps(T, steps, sp, abar).tolist() for sp in spacings}
    start_spacing = min(starts, key=lambda sp: cost(starts[sp]))
    ts, best = starts[start_spacing], cost(starts[start_spacing])
    lam = log_snr(abar)
    for r in range(rounds):
        for j in range(1, steps):
            for t in _moves(ts, j, 0.5 ** (r + 1), lam):
                trial = ts[:j] + [t] + ts[j + 1 :]
                if cost(trial) < best:
                    ts, best = trial, cost(trial)
    return Tuned(ts, start_spacing, cost(starts[start_spacing]), best, len(seen))


def _moves(ts: list[int], j: int, fraction: float, lam: Tensor) -> list[int]:
    """Timestep j moved ``fraction`` of the way in log-SNR towards each neighbour (the last one may reach t = 0)."""
    upper = ts[j - 1]
    lower = ts[j + 1] if j + 1 < len(ts) else -1
    here = float(lam[ts[j]])
    out = []
    for goal in (float(lam[upper]), float(lam[max(lower, 0)])):
        target = torch.tensor([here + fraction * (goal - here)], dtype=torch.float64)
        exact = interp(target, lam.flip(0), torch.arange(lam.numel() - 1, -1, -1, dtype=torch.float64))
        t = min(max(int(torch.round(exact)), lower + 1), upper - 1)
        if t != ts[j] and t not in out:
            out.append(t)
    return out


def _checked_sampler(
    run, sampler: SamplerName | None, steps: int, draws: int, heldout: int, rounds: int, seed: int, batch_size: int
) -> SamplerName:
    """The sampler to tune (default: the run's), once every argument of ``tune_steps`` is checked."""
    sampler = sampler or run.config.sample.sampler
    check_choice("sampler", sampler, SamplerName)
    if sampler not in TUNABLE:
        raise UserError(f"tune-steps tunes a deterministic sampler ({', '.join(TUNABLE)}); got {sampler!r}")
    for name, value in (("draws", draws), ("held-out draws", heldout), ("batch size", batch_size), ("rounds", rounds)):
        positive_int(f"the number of {name}", value)
    check_seed(seed, max(draws, HELDOUT_SEED + heldout))  # held-out draw i uses seed + HELDOUT_SEED + i
    int_in_range("tuned steps", steps, 2, run.diffusion.num_timesteps - 1)
    return sampler


def _free_path(run, sampler: str, steps: int, force: bool) -> Path:
    """Where the tuned grid goes inside the run directory; refused if one is there and ``force`` is not given."""
    if run.run_dir is None:
        raise UserError(f"tune-steps saves into a run directory; {run.checkpoint} is not inside RUN/checkpoints/")
    path = tuned_path(run.run_dir, sampler, steps)
    if path.exists() and not force:
        raise UserError(f"{path} exists (use --force to tune again and replace it)")
    return path


# --------------------------------------------------------------------------- a trained run
def tune_steps(
    run,
    steps: int,
    sampler: SamplerName | None = None,
    *,
    draws: int = 256,
    heldout: int = 256,
    rounds: int = 4,
    seed: int = 0,
    force: bool = False,
    batch_size: int = 256,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Tune the ``steps``-call grid of ``sampler`` (default: the run's) for ``run`` and save it; returns the record."""
    sampler = _checked_sampler(run, sampler, steps, draws, heldout, rounds, seed, batch_size)
    path = _free_path(run, sampler, steps, force)
    draw = _drawer(run, batch_size)
    train, held = _noise(run, draws, seed), _noise(run, heldout, seed + HELDOUT_SEED)
    ref_train, ref_held = draw(REFERENCE["sampler"], None, *train), draw(REFERENCE["sampler"], None, *held)
    say = log or (lambda text: None)

    def objective(ts: list[int]) -> float:
        return _mse(draw(sampler, ts, *train), ref_train)

    say(f"tuning {sampler} at {steps} calls on {draws} draws against {REFERENCE['steps']}-call {REFERENCE['sampler']}")
    found = search_timesteps(objective, run.diffusion.alphas_cumprod, steps, rounds)
    start_ts = sampling_timesteps(
        run.diffusion.num_timesteps, steps, found.start_spacing, run.diffusion.alphas_cumprod
    ).tolist()
    held_start, held_tuned = (_mse(draw(sampler, ts, *held), ref_held) for ts in (start_ts, found.timesteps))
    kept = held_tuned > held_start  # no better on fresh draws: keep the standard grid
    record = {
        "format": FORMAT,
        "version": 1,
        "sampler": sampler,
        "steps": steps,
        "num_timesteps": run.diffusion.num_timesteps,
        "timesteps": start_ts if kept else found.timesteps,
        "start_spacing": found.start_spacing,
        "kept_start": kept,
        "checkpoint_step": run.step,
        "guidance": run.config.sample.guidance,
        "reference": REFERENCE,
        "draws": draws,
        "heldout": heldout,
        "seed": seed,
        "rounds": rounds,
        "evaluations": found.evaluations,
        "objective": {
            "start": found.start,
            "tuned": found.tuned,
            "heldout_start": held_start,
            "heldout_tuned": held_tuned,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(record, indent=2) + "\n")
    record["path"] = str(path)
    return record


def _noise(run, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """x_T of draws seed, seed + 1, ... as ``Run.sample`` draws them, and labels cycling over the classes."""
    gens = seeded_generators(seed, range(n), run.device)
    x_T = randn((n, *run.sample_shape), gens, run.device, torch.float32)
    return x_T, parse_labels(None, n, run.num_classes, run.class_names)


def _drawer(run, batch_size: int) -> Callable:
    """draw(sampler, timesteps or None for the reference, x_T, y) -> x0 (float64, CPU), in batches, without autograd."""
    guidance = run.config.sample.guidance

    def draw(sampler, ts, x_T, y):
        out = []
        for s in range(0, x_T.shape[0], batch_size):
            yb = None if y is None else y[s : s + batch_size].to(run.device)
            ref_steps = min(REFERENCE["steps"], run.diffusion.num_timesteps)  # a short chain: all of it
            opts = (
                SamplingOptions(sampler, ref_steps, REFERENCE["spacing"], guidance=guidance)
                if ts is None
                else SamplingOptions(sampler, timesteps=torch.tensor(ts), guidance=guidance)
            )
            with torch.inference_mode():
                x = run.diffusion.sample(
                    run.model, tuple(x_T[s : s + batch_size].shape), y=yb, x_T=x_T[s : s + batch_size], options=opts
                )
            out.append(x.double().cpu())
        return torch.cat(out)

    return draw


def _mse(x: Tensor, ref: Tensor) -> float:
    return float((x - ref).pow(2).mean())


# --------------------------------------------------------------------------- the saved grid
def tuned_path(run_dir: str | Path, sampler: str, steps: int) -> Path:
    """Where a run keeps its tuned grid for ``sampler`` at ``steps`` calls."""
    return RunDir(run_dir).tuned(sampler, steps)


def load_tuned(run_dir: str | Path, sampler: str, steps: int, num_timesteps: int) -> tuple[list[int], Path] | None:
    """The saved grid and its file, None where there is none; a damaged file is a UserError (one line)."""
    path = tuned_path(run_dir, sampler, steps)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        ts = record.get("timesteps") if isinstance(record, dict) else None
        problem = _problem(record, ts, sampler, steps, num_timesteps)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = f"unreadable ({type(e).__name__})"
    if problem:
        raise UserError(f"tuned timesteps file {path} is {problem}: delete it or run `ddpmkit tune-steps` again")
    assert ts is not None  # _problem refuses a record without a list
    return [int(t) for t in ts], path


def _problem(record, ts, sampler: str, steps: int, T: int) -> str | None:
    """What is wrong with a loaded record, or None."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return "not a ddpmkit tuned-timesteps file"
    if record.get("sampler") != sampler or record.get("steps") != steps or record.get("num_timesteps") != T:
        return f"not for {sampler} at {steps} calls of a T = {T} model"
    if not isinstance(ts, list) or len(ts) != steps or not all(type(t) is int for t in ts):
        return f"damaged (timesteps must be a list of {steps} integers)"
    if any(a <= b for a, b in zip(ts, ts[1:])) or ts[0] > T - 1 or ts[-1] < 0:
        return f"damaged (timesteps must be strictly decreasing in [0, {T - 1}])"
    return None


def describe(record: dict) -> str:
    """One line for the command line: the objective before and after, and the file."""
    o = record["objective"]
    gain = f"held-out {o['heldout_start']:.3g} -> {o['heldout_tuned']:.3g}" + (
        " (no better: kept the start grid)" if record["kept_start"] else ""
    )
    return (
        f"tuned {record['sampler']} at {record['steps']} calls from {record['start_spacing']}: "
        f"objective {o['start']:.3g} -> {o['tuned']:.3g}, {gain}; wrote {record['path']}"
    )
