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

Measured 2026-11-25 on the project's 2-core CPU machine (AMD EPYC, torch 2.13.0+cpu, 1 thread,
the other core busy with training), ``python benchmarks/sampler_quality.py`` (2000 samples,
3 seeds, 188 s):

| sampler | spacing | calls | weight_tv | mean_error | std_error | SW | ms |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
| ddpm | linspace | 10 | 0.024 | 0.671 | 4.375 | 0.195 | 18 |
| ddpm | trailing | 10 | 0.023 | 0.765 | 1.351 | 0.112 | 24 |
| ddpm | quadratic | 10 | 0.021 | 0.201 | 0.776 | 0.122 | 26 |
| ddpm | logsnr | 10 | 0.018 | 0.349 | 0.879 | 0.113 | 21 |
| ddpm | karras | 10 | 0.021 | 0.512 | 1.565 | 0.124 | 24 |
| ddpm | snr_root* | 10 | 0.036 | 0.318 | 0.572 | 0.143 | 27 |
| ddim | linspace | 10 | 0.030 | 1.010 | 1.509 | 0.143 | 18 |
| ddim | trailing | 10 | 0.030 | 0.741 | 1.222 | 0.144 | 22 |
| ddim | quadratic* | 10 | 0.030 | 0.515 | 0.149 | 0.154 | 23 |
| ddim | logsnr | 10 | 0.030 | 1.079 | 0.458 | 0.157 | 25 |
| ddim | karras | 10 | 0.030 | 1.214 | 0.650 | 0.157 | 27 |
| ddim | snr_root | 10 | 0.030 | 1.403 | 0.461 | 0.165 | 26 |
| dpm++2m | linspace | 10 | 0.030 | 6.801 | 5.136 | 0.436 | 27 |
| dpm++2m | trailing | 10 | 0.030 | 0.467 | 1.001 | 0.146 | 23 |
| dpm++2m | quadratic | 10 | 0.030 | 0.295 | 0.266 | 0.169 | 21 |
| dpm++2m | logsnr | 10 | 0.030 | 0.891 | 0.159 | 0.171 | 21 |
| dpm++2m | karras | 10 | 0.030 | 2.677 | 0.273 | 0.226 | 23 |
| dpm++2m | snr_root* | 10 | 0.030 | 0.109 | 0.201 | 0.152 | 20 |
| dpm++3m | linspace | 10 | 0.030 | 6.581 | 5.243 | 0.432 | 17 |
| dpm++3m | trailing | 10 | 0.030 | 0.429 | 0.967 | 0.146 | 20 |
| dpm++3m | quadratic | 10 | 0.030 | 1.431 | 1.429 | 0.160 | 20 |
| dpm++3m | logsnr | 10 | 0.030 | 1.406 | 0.213 | 0.177 | 24 |
| dpm++3m | karras | 10 | 0.030 | 1.134 | 2.413 | 0.205 | 23 |
| dpm++3m | snr_root* | 10 | 0.030 | 0.192 | 0.106 | 0.154 | 24 |
| ddpm | linspace | 20 | 0.020 | 0.264 | 1.873 | 0.133 | 43 |
| ddpm | trailing | 20 | 0.024 | 0.159 | 0.227 | 0.140 | 46 |
| ddpm | quadratic | 20 | 0.026 | 0.113 | 0.277 | 0.129 | 42 |
| ddpm | logsnr | 20 | 0.021 | 0.134 | 0.320 | 0.121 | 57 |
| ddpm | karras | 20 | 0.021 | 0.192 | 0.534 | 0.122 | 47 |
| ddpm | snr_root* | 20 | 0.020 | 0.151 | 0.200 | 0.120 | 47 |
| ddim | linspace | 20 | 0.030 | 0.225 | 0.211 | 0.162 | 40 |
| ddim | trailing | 20 | 0.030 | 0.174 | 0.274 | 0.166 | 40 |
| ddim | quadratic* | 20 | 0.030 | 0.256 | 0.054 | 0.156 | 41 |
| ddim | logsnr | 20 | 0.030 | 0.469 | 0.161 | 0.154 | 35 |
| ddim | karras | 20 | 0.030 | 0.516 | 0.199 | 0.153 | 36 |
| ddim | snr_root | 20 | 0.030 | 0.600 | 0.186 | 0.155 | 45 |
| dpm++2m | linspace | 20 | 0.030 | 0.902 | 1.574 | 0.162 | 39 |
| dpm++2m | trailing | 20 | 0.030 | 0.050 | 0.407 | 0.173 | 42 |
| dpm++2m | quadratic | 20 | 0.030 | 0.065 | 0.040 | 0.157 | 40 |
| dpm++2m | logsnr | 20 | 0.030 | 0.103 | 0.043 | 0.157 | 55 |
| dpm++2m | karras | 20 | 0.030 | 0.285 | 0.123 | 0.162 | 46 |
| dpm++2m | snr_root* | 20 | 0.030 | 0.076 | 0.067 | 0.155 | 36 |
| dpm++3m | linspace | 20 | 0.030 | 0.641 | 1.706 | 0.154 | 40 |
| dpm++3m | trailing | 20 | 0.030 | 0.044 | 0.433 | 0.174 | 39 |
| dpm++3m | quadratic | 20 | 0.030 | 0.114 | 0.135 | 0.154 | 42 |
| dpm++3m | logsnr | 20 | 0.030 | 0.162 | 0.092 | 0.155 | 37 |
| dpm++3m | karras | 20 | 0.030 | 0.742 | 0.512 | 0.152 | 41 |
| dpm++3m | snr_root* | 20 | 0.030 | 0.098 | 0.055 | 0.156 | 47 |
| ddpm | linspace | 50 | 0.023 | 0.139 | 0.513 | 0.130 | 106 |
| ddpm | trailing | 50 | 0.028 | 0.089 | 0.111 | 0.142 | 101 |
| ddpm | quadratic | 50 | 0.025 | 0.086 | 0.091 | 0.120 | 99 |
| ddpm | logsnr | 50 | 0.021 | 0.095 | 0.101 | 0.116 | 95 |
| ddpm | karras | 50 | 0.021 | 0.097 | 0.162 | 0.145 | 104 |
| ddpm | snr_root* | 50 | 0.014 | 0.084 | 0.059 | 0.122 | 116 |
| ddim | linspace | 50 | 0.030 | 0.108 | 0.207 | 0.161 | 99 |
| ddim | trailing | 50 | 0.030 | 0.094 | 0.299 | 0.163 | 109 |
| ddim | quadratic* | 50 | 0.030 | 0.125 | 0.038 | 0.157 | 97 |
| ddim | logsnr | 50 | 0.030 | 0.193 | 0.055 | 0.155 | 102 |
| ddim | karras | 50 | 0.030 | 0.208 | 0.060 | 0.155 | 96 |
| ddim | snr_root | 50 | 0.030 | 0.235 | 0.063 | 0.155 | 103 |
| dpm++2m | linspace | 50 | 0.030 | 0.065 | 0.086 | 0.157 | 94 |
| dpm++2m | trailing | 50 | 0.030 | 0.042 | 0.355 | 0.166 | 88 |
| dpm++2m | quadratic | 50 | 0.030 | 0.069 | 0.037 | 0.157 | 96 |
| dpm++2m | logsnr | 50 | 0.030 | 0.066 | 0.037 | 0.157 | 95 |
| dpm++2m | karras | 50 | 0.030 | 0.064 | 0.037 | 0.157 | 94 |
| dpm++2m | snr_root* | 50 | 0.030 | 0.071 | 0.036 | 0.157 | 100 |
| dpm++3m | linspace | 50 | 0.030 | 0.110 | 0.236 | 0.152 | 103 |
| dpm++3m | trailing | 50 | 0.030 | 0.053 | 0.320 | 0.164 | 101 |
| dpm++3m | quadratic | 50 | 0.030 | 0.070 | 0.037 | 0.157 | 98 |
| dpm++3m | logsnr | 50 | 0.030 | 0.072 | 0.036 | 0.157 | 106 |
| dpm++3m | karras | 50 | 0.030 | 0.078 | 0.037 | 0.157 | 103 |
| dpm++3m | snr_root* | 50 | 0.030 | 0.071 | 0.037 | 0.157 | 112 |
| ddpm | linspace | 100 | 0.022 | 0.094 | 0.200 | 0.140 | 196 |
| ddpm | trailing | 100 | 0.024 | 0.074 | 0.046 | 0.144 | 184 |
| ddpm | quadratic | 100 | 0.021 | 0.093 | 0.058 | 0.133 | 210 |
| ddpm | logsnr | 100 | 0.024 | 0.070 | 0.050 | 0.149 | 199 |
| ddpm | karras | 100 | 0.021 | 0.077 | 0.077 | 0.142 | 193 |
| ddpm | snr_root* | 100 | 0.023 | 0.074 | 0.043 | 0.114 | 217 |
| ddim | linspace | 100 | 0.030 | 0.083 | 0.131 | 0.159 | 182 |
| ddim | trailing | 100 | 0.030 | 0.078 | 0.185 | 0.161 | 210 |
| ddim | quadratic* | 100 | 0.030 | 0.091 | 0.038 | 0.157 | 185 |
| ddim | logsnr | 100 | 0.030 | 0.117 | 0.037 | 0.156 | 212 |
| ddim | karras | 100 | 0.030 | 0.123 | 0.037 | 0.156 | 191 |
| ddim | snr_root | 100 | 0.030 | 0.134 | 0.037 | 0.156 | 183 |
| dpm++2m | linspace | 100 | 0.030 | 0.072 | 0.062 | 0.156 | 183 |
| dpm++2m | trailing | 100 | 0.030 | 0.057 | 0.175 | 0.161 | 204 |
| dpm++2m | quadratic | 100 | 0.030 | 0.069 | 0.038 | 0.157 | 204 |
| dpm++2m | logsnr | 100 | 0.030 | 0.068 | 0.037 | 0.157 | 199 |
| dpm++2m | karras | 100 | 0.030 | 0.067 | 0.037 | 0.157 | 197 |
| dpm++2m | snr_root* | 100 | 0.030 | 0.069 | 0.037 | 0.157 | 214 |
| dpm++3m | linspace | 100 | 0.030 | 0.076 | 0.076 | 0.155 | 192 |
| dpm++3m | trailing | 100 | 0.030 | 0.059 | 0.165 | 0.160 | 184 |
| dpm++3m | quadratic | 100 | 0.030 | 0.069 | 0.038 | 0.157 | 186 |
| dpm++3m | logsnr | 100 | 0.030 | 0.068 | 0.038 | 0.157 | 213 |
| dpm++3m | karras | 100 | 0.030 | 0.069 | 0.037 | 0.157 | 191 |
| dpm++3m | snr_root* | 100 | 0.030 | 0.068 | 0.038 | 0.157 | 204 |
| ddpm | any | 1000 | 0.025 | 0.087 | 0.039 | 0.114 | 2028 |
| ddim | any | 1000 | 0.030 | 0.069 | 0.044 | 0.158 | 1715 |
| dpm++2m | any | 1000 | 0.030 | 0.068 | 0.038 | 0.157 | 1730 |
| dpm++3m | any | 1000 | 0.030 | 0.068 | 0.038 | 0.157 | 1764 |
| exact | - | - | 0.024 | 0.082 | 0.034 | 0.143 | 0 |

Reading (sampling noise: the "exact" row; ODE samplers share their x_T draws, so their
weight_tv and SW stay at those draws' values). At 10 and 20 calls "linspace", the classic grid,
is among the worst for every sampler: on the linear schedule it leaves almost no calls at the
low noise levels where the mixture's sharp components form. At 10 calls DPM-Solver++ on
"snr_root" (uniform in SNR^(1/8), the defaults) is the most accurate of everything here; at
20 calls 2M on "quadratic" or "logsnr" is slightly better on these two rings than on
"snr_root", 3M is best on "snr_root". DDIM is best on "quadratic" at every budget. By 50 calls
DPM-Solver++ on any grid but linspace and trailing is at the sampling-noise level; DDIM and
ancestral sampling get there at about 100 calls on their default grids. With the ODE samplers
"trailing" keeps a large std_error at every budget: its last network call is at t = T/k - 1,
whose denoised output is still shrunk towards the component means; grids ending at t = 0 are not.

Part B, 2026-11-26: the default preset's run (4000 steps, bf16) on the Zen 5 CI CPU, 2 threads,
with the 1000-step ancestral reference (``--no-oracle --run runs/digits --threads 2``; fd_floor
0.412):

| sampler | spacing | steps | accuracy | FD (features) | wall s |
| --- | --- | ---: | ---: | ---: | ---: |
| ddpm | snr_root | 10 | 0.972 | 0.784 | 2.7 |
| ddim | quadratic | 10 | 0.998 | 0.577 | 2.3 |
| dpm++2m | snr_root | 10 | 0.996 | 0.617 | 2.2 |
| dpm++3m | snr_root | 10 | 0.995 | 0.636 | 3.7 |
| ddpm | snr_root | 20 | 0.992 | 0.595 | 4.4 |
| ddim | quadratic | 20 | 0.993 | 0.530 | 4.5 |
| dpm++2m | snr_root | 20 | 0.992 | 0.530 | 4.2 |
| dpm++3m | snr_root | 20 | 0.992 | 0.524 | 4.1 |
| ddpm | snr_root | 50 | 0.994 | 0.579 | 10.8 |
| ddim | quadratic | 50 | 0.991 | 0.507 | 11.5 |
| dpm++2m | snr_root | 50 | 0.990 | 0.519 | 11.2 |
| dpm++3m | snr_root | 50 | 0.990 | 0.517 | 11.4 |
| ddpm | all | 1000 | 0.995 | 0.580 | 222.2 |

By 20 calls the deterministic samplers match the 1000-step ancestral chain (FD 0.52-0.53 vs
0.58, accuracy 0.992-0.993 vs 0.995) at 1/50 of its wall time; ancestral sampling trails at 10
calls (FD 0.78, accuracy 0.97). On an earlier 4000-step fp32 run (2026-11-25, Zen 3) the
numbers were within about 0.05 FD of these, and "quadratic" scored a little better than "snr_root"
there (500 digits, same seeds; FD at 10 / 20 calls: dpm++2m 0.64 / 0.63 vs 0.72 / 0.65, ddpm
0.77 / 0.66 vs 0.85 / 0.79): the defaults favour the sharp-mixture accuracy.
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
def digits_table(run: str, per_class: int, steps_list: list[int], reference: bool, seed: int) -> str:
    import numpy as np

    from ddpmkit.cli import load_run
    from ddpmkit.eval import metrics
    from ddpmkit.eval.digits import get_judge
    from ddpmkit.images import to_uint8

    cfg, model, diffusion, _ = load_run(run, use_ema=True, device="cpu")
    if getattr(model, "null_class", None) is None:
        raise SystemExit("error: part B needs a class-conditional digits run")
    judge = get_judge(0)
    ref_feats = judge.features(judge.split.test_images)
    labels = torch.arange(10).repeat_interleave(per_class)
    n = labels.numel()
    shape = (cfg.model.params["in_channels"], cfg.model.params["image_size"], cfg.model.params["image_size"])
    rng = np.random.default_rng(0)
    train = judge.split.train_images
    floor_imgs = train[np.sort(rng.choice(len(train), min(n, len(train)), replace=False))]
    fd_floor = metrics.frechet_distance(judge.features(floor_imgs), ref_feats)

    runs = [(s, k) for k in steps_list for s in SAMPLERS] + ([("ddpm", diffusion.num_timesteps)] if reference else [])
    lines = [f"digits run {run}: {n} samples ({per_class} per class), guidance {cfg.sample.guidance}, "
             f"fd_floor {fd_floor:.3f}", "",
             "| sampler | spacing | steps | accuracy | FD (features) | wall s |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for sampler, k in runs:
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        start = time.perf_counter()
        x = diffusion.sample(model, (n, *shape), sampler=sampler, steps=k, y=labels, guidance_scale=cfg.sample.guidance,
                             generator=gens, eta=0.0, device="cpu")
        wall = time.perf_counter() - start
        images = to_uint8(x, cfg.sample.levels)
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
