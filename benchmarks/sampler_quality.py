"""Sample quality of every sampler and timestep spacing against exact answers.

    python benchmarks/sampler_quality.py [--samples N] [--seeds S] [--threads T]
    python benchmarks/sampler_quality.py --run RUN_DIR [--digits-per-class 100] [--no-oracle]

Part A (always, unless --no-oracle): the exact noise predictor of sharp 2-D mixtures
(``GaussianMixtureOracle.ring``: 8 Gaussians on a circle of radius 2, std 0.05 and 0.1), linear
schedule, T = 1000, float64. For every sampler (ddpm with the default fixed_large variance,
ddim at eta 0, dpm++2m, dpm++3m) and spacing, at 10, 20, 50 and 100 network calls (and the full
1000-step chain, where every spacing is the same), the samples are compared with the mixture:
``MixtureFit`` (weight_tv, mean_error, std_error; see ddpmkit/oracles.py) and the sliced
Wasserstein-2 distance to as many exact samples. Each number is the mean over both mixtures and
the seeds; "ms" is the wall time of one sampling run. The "exact" row is exact samples scored
the same way: the sampling-noise floor. A * marks each sampler's default spacing.

Part B (with --run): a trained class-conditional digits run, sampled as ``ddpmkit sample --precision fp32`` does
(EMA weights, per-sample generators, the run's clipping, guidance and grey levels): 100 digits
per class with each sampler at 10, 20, 50 steps (default spacing) and the 1000-step ancestral
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

SAMPLERS = ["ddpm", "ddim", "dpm++2m", "dpm++3m"]
SPACINGS = [s for s in get_args(S.Spacing) if s != "leading"]  # leading is linspace moved down by T/k
CALLS = [10, 20, 50, 100]
STDS = [0.05, 0.1]
T = 1000


# --------------------------------------------------------------------------- part A
def oracle_table(samples: int, seeds: int) -> str:
    d = ddpmkit.GaussianDiffusion(ddpmkit.linear_beta_schedule(T))
    mixtures = [GaussianMixtureOracle.ring(d.alphas_cumprod, std=s) for s in STDS]
    configs = [(s, sp, k) for s in SAMPLERS for sp in SPACINGS for k in CALLS] + [(s, "any", T) for s in SAMPLERS]
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
                x = d.sample(mix, (samples, 2), sampler=sampler, steps=k, spacing=None if k == T else spacing,
                             generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
                ms = 1e3 * (time.perf_counter() - start)
                fit = mix.compare(x)
                sw = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(7))
                scores[(sampler, spacing, k)].append((*fit, sw, ms))
        print(f"  seed {seed + 1}/{seeds} done", file=sys.stderr, flush=True)

    def row(cells, values):
        mean = [statistics.fmean(v[j] for v in values) for j in range(5)]
        return "| " + " | ".join(cells + [f"{v:.3f}" for v in mean[:4]] + [f"{mean[4]:.0f}"]) + " |"

    lines = ["| sampler | spacing | calls | weight_tv | mean_error | std_error | SW | ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k in CALLS + [T]:
        for sampler in SAMPLERS:
            for spacing in (SPACINGS if k != T else ["any"]):
                mark = "*" if k != T and S.DEFAULT_SPACING[sampler] == spacing else ""
                lines.append(row([sampler, spacing + mark, str(k)], scores[(sampler, spacing, k)]))
    lines.append(row(["exact", "-", "-"], floor))
    return "\n".join(lines)


# --------------------------------------------------------------------------- part B
def digits_table(run_path: str, per_class: int, steps_list: list[int], reference: bool, seed: int) -> str:
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

    diffusion, sample = run.diffusion, run.config.sample
    runs = [(s, k) for k in steps_list for s in SAMPLERS] + ([("ddpm", diffusion.num_timesteps)] if reference else [])
    lines = [f"digits run {run_path}: {n} samples ({per_class} per class), guidance {sample.guidance}, "
             f"fd_floor {fd_floor:.3f}", "",
             "| sampler | spacing | steps | accuracy | FD (features) | wall s |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for sampler, k in runs:
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        start = time.perf_counter()
        x = diffusion.sample(run.model, (n, *run.sample_shape), sampler=sampler, steps=k, y=labels,
                             guidance_scale=sample.guidance, generator=gens, device="cpu")  # ddim: eta 0
        wall = time.perf_counter() - start
        images = to_uint8(x, sample.levels)
        acc = float(np.mean(judge.classify(images) == labels.numpy()))
        fd = metrics.frechet_distance(judge.features(images), ref_feats)
        spacing = "all" if k == diffusion.num_timesteps else S.DEFAULT_SPACING[sampler]
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
    p.add_argument("--digits-steps", default="10,20,50", help="comma-separated step counts for part B")
    p.add_argument("--no-reference", action="store_true", help="part B without the 1000-step ancestral run")
    p.add_argument("--no-oracle", action="store_true", help="skip part A")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    if not args.no_oracle:
        start = time.perf_counter()
        print(f"## Part A: exact mixture oracle (ring of 8, std {' and '.join(map(str, STDS))}; "
              f"{args.samples} samples, {args.seeds} seeds; means)\n")
        print(oracle_table(args.samples, args.seeds))
        print(f"\n(part A took {time.perf_counter() - start:.0f} s)\n")
    if args.run:
        if not Path(args.run).exists():
            raise SystemExit(f"error: no such run: {args.run}")
        print("## Part B: trained digits model\n")
        steps = [int(v) for v in args.digits_steps.split(",") if v]
        print(digits_table(args.run, args.digits_per_class, steps, not args.no_reference, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
