"""Sample quality of every sampler and timestep spacing against exact answers.

    python benchmarks/sampler_quality.py [--samples N] [--seeds S] [--threads T]
    python benchmarks/sampler_quality.py --run RUN_DIR [--digits-per-class 100] [--no-oracle]

Part A (always, unless --no-oracle): the exact noise predictor of sharp 2-D mixtures
(``GaussianMixtureOracle.ring``: 8 Gaussians on a circle of radius 2, std 0.05 and 0.1), linear
schedule, T = 1000, float64. For every sampler (ddpm with the default fixed_large variance,
ddim at eta 0, dpm++2m, dpm++3m, unipc-bh1, unipc-bh2) and spacing, at 10, 15, 20 and 50 network
calls (and the full 1000-step chain, where every spacing is the same), and for dpm++2m and UniPC
also on a grid tuned per mixture ("tuned": ``ddpmkit.runs.tuning.search_timesteps`` on 300 draws
of other seeds against a 250-call DPM-Solver++(3M) solution), the samples are compared with the mixture:
``MixtureFit`` (weight_tv, mean_error, std_error; see ddpmkit/oracles.py) and the sliced
Wasserstein-2 distance to as many exact samples. Each number is the mean over both mixtures and
the seeds; "ms" is the wall time of one sampling run. The "exact" row is exact samples scored
the same way: the sampling-noise floor. A * marks each sampler's default spacing.

Part B (with --run): a trained class-conditional digits run, sampled as ``ddpmkit sample --precision fp32`` does
(EMA weights, per-sample generators, the run's clipping, guidance and grey levels): 100 digits
per class with each sampler at 10, 15, 20, 50 steps (default spacing, and the run's tuned grid
where ``ddpmkit tune-steps`` saved one) and the 1000-step ancestral
reference, scored by the project's digits judge (ddpmkit/eval/digits.py): classifier accuracy
against the requested labels and the Fréchet distance in the judge's fixed feature space to the
held-out test digits (fd_floor: the same distance for real train digits).

Results, and how to read them: docs/samplers.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import get_args

import torch

import ddpmkit
from ddpmkit import samplers as S
from ddpmkit.oracles import GaussianMixtureOracle, sliced_wasserstein

SAMPLERS = ["ddpm", "ddim", "dpm++2m", "dpm++3m", "unipc-bh1", "unipc-bh2"]
SPACINGS = [s for s in get_args(S.Spacing) if s != "leading"]  # leading is linspace moved down by T/k
TUNED = ["dpm++2m", "unipc-bh1", "unipc-bh2"]  # samplers also run on a grid tuned per mixture ("tuned")
CALLS = [10, 15, 20, 50]
STDS = [0.05, 0.1]
T = 1000
TUNE_DRAWS, TUNE_SEED, TUNE_ROUNDS = 300, 50_000, 3  # the tuning's own draws: never the scored ones


def tuned_grids(d, mixtures, calls: list[int]) -> dict[tuple, list[int]]:
    """(sampler, mixture index, K) -> the K-call grid of ``search_timesteps`` against a 250-call DPM-Solver++(3M)."""
    from ddpmkit.runs.tuning import search_timesteps

    ref_ts = S.sampling_timesteps(T, 250, "snr_root", d.alphas_cumprod)
    grids = {}
    for m, mix in enumerate(mixtures):
        x_T = torch.randn(TUNE_DRAWS, 2, generator=torch.Generator().manual_seed(TUNE_SEED + m), dtype=torch.float64)
        ref = S.dpmpp_3m_sample(mix.denoise, x_T, ref_ts, d.alphas_cumprod)
        for sampler in TUNED:
            for k in calls:

                def objective(ts, sampler=sampler):
                    return float((S.SAMPLERS[sampler](mix.denoise, x_T, ts, d.alphas_cumprod) - ref).pow(2).mean())

                grids[(sampler, m, k)] = search_timesteps(objective, d.alphas_cumprod, k, TUNE_ROUNDS).timesteps
    return grids


# --------------------------------------------------------------------------- part A
def oracle_table(samples: int, seeds: int) -> str:
    d = ddpmkit.GaussianDiffusion(ddpmkit.linear_beta_schedule(T))
    mixtures = [GaussianMixtureOracle.ring(d.alphas_cumprod, std=s) for s in STDS]
    start = time.perf_counter()
    grids = tuned_grids(d, mixtures, CALLS)
    print(f"  tuned {len(grids)} grids in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    configs = (
        [(s, sp, k) for s in SAMPLERS for sp in SPACINGS for k in CALLS]
        + [(s, "any", T) for s in SAMPLERS]
        + [(s, "tuned", k) for s in TUNED for k in CALLS]
    )
    scores: dict[tuple, list] = {c: [] for c in configs}
    floor = []
    for seed in range(seeds):
        for m, mix in enumerate(mixtures):
            ref = mix.sample(samples, torch.Generator().manual_seed(10_000 + 100 * seed + m))
            proj = torch.Generator().manual_seed(7)
            exact = mix.sample(samples, torch.Generator().manual_seed(20_000 + 100 * seed + m))
            floor.append((*mix.compare(exact), sliced_wasserstein(exact, ref, generator=proj), 0.0))
            for sampler, spacing, k in configs:
                start = time.perf_counter()
                ts = torch.tensor(grids[(sampler, m, k)]) if spacing == "tuned" else None
                x = d.sample(
                    mix,
                    (samples, 2),
                    sampler=sampler,
                    steps=k,
                    spacing=None if k == T or ts is not None else spacing,
                    generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64,
                    timesteps=ts,
                )
                ms = 1e3 * (time.perf_counter() - start)
                fit = mix.compare(x)
                sw = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(7))
                scores[(sampler, spacing, k)].append((*fit, sw, ms))
        print(f"  seed {seed + 1}/{seeds} done", file=sys.stderr, flush=True)

    def row(cells, values):
        mean = [statistics.fmean(v[j] for v in values) for j in range(5)]
        return "| " + " | ".join(cells + [f"{v:.3f}" for v in mean[:4]] + [f"{mean[4]:.0f}"]) + " |"

    lines = [
        "| sampler | spacing | calls | weight_tv | mean_error | std_error | SW | ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in CALLS + [T]:
        for sampler in SAMPLERS:
            for spacing in SPACINGS + (["tuned"] if sampler in TUNED else []) if k != T else ["any"]:
                mark = "*" if k != T and S.DEFAULT_SPACING[sampler] == spacing else ""
                lines.append(row([sampler, spacing + mark, str(k)], scores[(sampler, spacing, k)]))
    lines.append(row(["exact", "-", "-"], floor))
    return "\n".join(lines) + "\n\n" + floor_ratios(scores, floor)


def floor_ratios(scores: dict, floor: list) -> str:
    """Per call count: the error (mean_error + std_error) over the exact samples' (the floor), best first."""

    def err(values):
        return statistics.fmean(v[1] + v[2] for v in values)

    base = err(floor)
    lines = [
        f"Error over the sampling-noise floor (mean_error + std_error; floor {base:.3f}):",
        "",
        "| calls | best (sampler, spacing) | best | unipc-bh1* | unipc-bh2* | dpm++2m* | ddim* | tuned best |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in CALLS:
        here = {(s, sp): err(v) / base for (s, sp, kk), v in scores.items() if kk == k}
        best = min(here, key=here.get)
        tuned = min(v for (s, sp), v in here.items() if sp == "tuned")
        default = [here[(s, S.DEFAULT_SPACING[s])] for s in ("unipc-bh1", "unipc-bh2", "dpm++2m", "ddim")]
        lines.append(
            f"| {k} | {best[0]}, {best[1]} | {here[best]:.2f}x | "
            + " | ".join(f"{v:.2f}x" for v in default)
            + f" | {tuned:.2f}x |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- part B
def digits_table(
    run_path: str, per_class: int, steps_list: list[int], reference: bool, seed: int, samplers: list[str]
) -> str:
    import numpy as np

    from ddpmkit import Run
    from ddpmkit.eval import metrics
    from ddpmkit.eval.digits import get_judge
    from ddpmkit.images import to_uint8

    run = Run.load(run_path, ema=True, device="cpu")
    if run.num_classes is None:
        raise SystemExit("error: part B needs a class-conditional digits run")
    judge = get_judge(0)
    ref_feats = judge.features(judge.split.test_images)
    labels = torch.arange(10).repeat_interleave(per_class)
    n = labels.numel()
    rng = np.random.default_rng(0)
    train = judge.split.train_images
    floor_imgs = train[np.sort(rng.choice(len(train), min(n, len(train)), replace=False))]
    fd_floor = metrics.frechet_distance(judge.features(floor_imgs), ref_feats)

    from ddpmkit.runs.tuning import load_tuned

    diffusion, sample = run.diffusion, run.config.sample
    T_run = diffusion.num_timesteps
    tuned = {(s, k): load_tuned(run.run_dir, s, k, T_run) for k in steps_list for s in samplers} if run.run_dir else {}
    runs = (
        [(s, k, None) for k in steps_list for s in samplers]
        + [(s, k, v[0]) for (s, k), v in tuned.items() if v is not None]
        + ([("ddpm", T_run, None)] if reference else [])
    )
    lines = [
        f"digits run {run_path}: {n} samples ({per_class} per class), guidance {sample.guidance}, "
        f"fd_floor {fd_floor:.3f}",
        "",
        "| sampler | spacing | steps | accuracy | FD (features) | wall s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for sampler, k, ts in runs:
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        start = time.perf_counter()
        with torch.inference_mode():  # ddim: eta 0; ts: the run's tuned grid (RUN/timesteps), if any
            x = diffusion.sample(
                run.model,
                (n, *run.sample_shape),
                sampler=sampler,
                steps=k,
                y=labels,
                guidance_scale=sample.guidance,
                generator=gens,
                device="cpu",
                timesteps=None if ts is None else torch.tensor(ts),
            )
        wall = time.perf_counter() - start
        images = to_uint8(x, sample.levels)
        acc = float(np.mean(judge.classify(images) == labels.numpy()))
        fd = metrics.frechet_distance(judge.features(images), ref_feats)
        spacing = "all" if k == T_run else "tuned" if ts is not None else S.DEFAULT_SPACING[sampler]
        lines.append(f"| {sampler} | {spacing} | {k} | {acc:.3f} | {fd:.3f} | {wall:.1f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=2000, help="samples per run in part A")
    p.add_argument("--seeds", type=int, default=3, help="seeds per mixture in part A")
    p.add_argument("--threads", type=int, default=1, help="torch threads (part A gains nothing from more)")
    p.add_argument("--run", help="a trained class-conditional digits run directory or checkpoint: part B")
    p.add_argument("--digits-per-class", type=int, default=100)
    p.add_argument("--digits-steps", default="10,15,20,50", help="comma-separated step counts for part B")
    p.add_argument("--digits-samplers", default=",".join(SAMPLERS), help="comma-separated samplers for part B")
    p.add_argument("--no-reference", action="store_true", help="part B without the 1000-step ancestral run")
    p.add_argument("--no-oracle", action="store_true", help="skip part A")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    if not args.no_oracle:
        start = time.perf_counter()
        print(
            f"## Part A: exact mixture oracle (ring of 8, std {' and '.join(map(str, STDS))}; "
            f"{args.samples} samples, {args.seeds} seeds; means)\n"
        )
        print(oracle_table(args.samples, args.seeds))
        print(f"\n(part A took {time.perf_counter() - start:.0f} s)\n")
    if args.run:
        if not Path(args.run).exists():
            raise SystemExit(f"error: no such run: {args.run}")
        print("## Part B: trained digits model\n")
        steps = [int(v) for v in args.digits_steps.split(",") if v]
        samplers = [v for v in args.digits_samplers.split(",") if v]
        print(digits_table(args.run, args.digits_per_class, steps, not args.no_reference, args.seed, samplers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
