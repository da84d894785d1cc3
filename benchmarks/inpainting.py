"""Inpainting and image-to-image against exact answers, and digit completion on a trained run.

    python benchmarks/inpainting.py gaussian [--samples 2000]
    python benchmarks/inpainting.py pictures --run RUN_DIR [--out-dir docs]
    python benchmarks/inpainting.py digits --run RUN_DIR [--steps 50] [--resample 4] [--jump 5] [--num 360]
                                           [--votes 1]
                                           [--picture docs/inpainting_digits.png]

gaussian: data N(mu, Sigma) on four strongly correlated pixels [1, 2, 2] (the matrix of
tests/maths/test_editing.py), its exact noise predictor (``GaussianMixtureOracle``), float64. The top
row (0.8, 0.9) is known; the exact law of the bottom row given it is Gaussian with a closed-form
mean and covariance. For each T (linear schedule stretched to T), jump J and resampling R,
``--samples`` RePaint completions (ancestral, every step kept) are scored by the mean error in
conditional standard deviations (Mahalanobis) and the largest entry of the whitened covariance
minus I; "exact" scores as many exact conditional draws (the Monte Carlo floor). Then SDEdit: data
samples edited at each strength (T = 1000, ancestral) against the data's law (mean error, whitened
covariance error) and against the input-output covariance a Sigma (a Sigma + (1 - a) I)^-1 Sigma
that the exact reverse process gives (a = alpha-bar at t0).

digits: the bottom half (rows 4-7) of the held-out test digits (the judge's split) blanked and
completed by a trained digits run, unconditionally (its null label), ancestral with ``--steps``
kept timesteps, once with plain replacement (R = 1) and once with RePaint (``--resample``,
``--jump``); the digits judge (ddpmkit/eval/digits.py) classifies each completion and is scored
against the true class (with ``--votes V``: V completions per digit, scored each and by their
majority class). Beside: the judge on the true digits and on the half-blank inputs.

pictures: the 37 held-out 3s edited with the label 8 at strengths 0.1 ... 0.9 (the run's own
sampler), 4 edits each, judged; docs/edit_digits.png (the first 3 and 6 of its edits per strength) and
docs/interpolation_digits.png (a held-out 3 and 8 DDIM-inverted and joined by slerp, unconditional).
Results: docs/editing.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import ddpmkit
from ddpmkit.oracles import GaussianMixtureOracle

F64 = torch.float64
CHOL = torch.tensor([[1, 0, 0, 0], [0.9, 0.4, 0, 0], [0.8, 0.3, 0.4, 0], [0.7, 0.5, 0.2, 0.3]], dtype=F64)
COV = CHOL @ CHOL.T * 0.25
MU = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=F64)
KNOWN = torch.tensor([0.8, 0.9], dtype=F64)
MASK = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64).view(1, 1, 2, 2)


def gaussian_diffusion(T: int) -> tuple[ddpmkit.GaussianDiffusion, GaussianMixtureOracle]:
    d = ddpmkit.GaussianDiffusion(ddpmkit.linear_beta_schedule(T, 0.1 / T, min(20.0 / T, 0.5)))
    return d, GaussianMixtureOracle([1.0], MU[None], COV[None], d.alphas_cumprod)


def conditional() -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the bottom row given the top row = KNOWN (Gaussian conditioning)."""
    k, u = [0, 1], [2, 3]
    s_kk, s_uk = COV[k][:, k], COV[u][:, k]
    mean = MU[u] + s_uk @ torch.linalg.solve(s_kk, KNOWN - MU[k])
    return mean, COV[u][:, u] - s_uk @ torch.linalg.solve(s_kk, s_uk.T)


def score(xu: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """(Mahalanobis mean error, max |whitened covariance - I|) of samples xu [N, D]."""
    L = torch.linalg.cholesky(cov)
    w = torch.linalg.solve(L, torch.linalg.solve(L, torch.cov(xu.T)).T)
    mean_error = float(torch.linalg.solve(L, xu.mean(0) - mean).norm())
    return mean_error, float((w - torch.eye(len(mean), dtype=F64)).abs().max())


def inpainting_table(n: int) -> str:
    mean, cov = conditional()
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    exact = mean + noise @ torch.linalg.cholesky(cov).T
    rows = [
        "| T | J | R | network calls | mean error (cond. stds) | covariance error | s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    m, c = score(exact, mean, cov)
    rows.append(f"| exact | | | | {m:.3f} | {c:.3f} | |")
    for T, J, Rs in [
        (100, 1, (1, 2, 5, 10, 20, 50)),
        (100, 5, (2, 5, 10, 20)),
        (100, 10, (5, 20)),
        (1000, 1, (1, 2, 5)),
    ]:
        d, oracle = gaussian_diffusion(T)
        x0 = torch.zeros(n, 1, 2, 2, dtype=F64)
        x0.view(n, 4)[:, :2] = KNOWN
        for R in Rs:
            start, calls = time.perf_counter(), []
            x = d.inpaint(
                oracle,
                x0,
                MASK,
                resample=R,
                jump_length=J,
                generator=torch.Generator().manual_seed(0),
                callback=lambda *a: calls.append(1),
            )
            m, c = score(x.view(n, 4)[:, 2:], mean, cov)
            rows.append(f"| {T} | {J} | {R} | {len(calls)} | {m:.3f} | {c:.3f} | {time.perf_counter() - start:.1f} |")
            print(rows[-1], file=sys.stderr)
    return "\n".join(rows)


def sdedit_table(n: int) -> str:
    d, oracle = gaussian_diffusion(1000)
    x = oracle.sample(n, torch.Generator().manual_seed(1)).view(n, 1, 2, 2)
    rows = [
        "| strength | t0 | mean error (stds) | covariance error | input-output covariance error (max) | "
        "its size (max) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    m, c = score(oracle.sample(n, torch.Generator().manual_seed(3)), MU, COV)
    rows.append(f"| exact samples | | {m:.3f} | {c:.3f} | | |")
    for s in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        out = d.edit(oracle, x, s, generator=torch.Generator().manual_seed(2)).view(n, 4)
        m, c = score(out, MU, COV)
        n0 = round(s * 1000)
        a = float(d.alphas_cumprod[n0 - 1]) if n0 else 1.0
        expected = a * COV @ torch.linalg.solve(a * COV + (1 - a) * torch.eye(4, dtype=F64), COV)
        cross = torch.cov(torch.cat([x.view(n, 4), out], 1).T)[:4, 4:]
        cross_error = float((cross - expected).abs().max())
        rows.append(
            f"| {s} | {n0 - 1 if n0 else '-'} | {m:.3f} | {c:.3f} | {cross_error:.4f} "
            f"| {float(expected.abs().max()):.4f} |"
        )
    return "\n".join(rows)


def digits(args) -> str:
    from ddpmkit.eval.digits import get_judge
    from ddpmkit.images import to_uint8
    from ddpmkit.runs.editing import inpaint

    torch.set_num_threads(args.threads)
    run = ddpmkit.Run.load(args.run)
    judge = get_judge(0)
    split = judge.split
    images = torch.from_numpy(split.test_images[: args.num].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    truth = split.test_labels[: args.num]
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 4:, :] = 0  # bottom half generated
    levels = run.config.sample.levels
    blank = to_uint8(images * mask, levels)
    rows = [
        f"digits run {args.run} (step {run.step}), {args.num} held-out test digits, ancestral {args.steps} steps, "
        "unconditional (null label)",
        "",
        "| completion | network calls | judge accuracy | MLP accuracy | s |",
        "|---|---:|---:|---:|---:|",
        f"| true digits | | {np.mean(judge.classify(split.test_images[: args.num]) == truth):.3f} | "
        f"{np.mean(judge.classify_mlp(split.test_images[: args.num]) == truth):.3f} | |",
        f"| bottom half blank (no completion) | | {np.mean(judge.classify(blank) == truth):.3f} | "
        f"{np.mean(judge.classify_mlp(blank) == truth):.3f} | |",
    ]
    for R, J in ((1, 1), (args.resample, args.jump)):
        start = time.perf_counter()
        out = inpaint(
            run, images, mask, num=args.votes, resample=R, jump=J, steps=args.steps, precision="fp32", batch_size=1024
        )
        done = to_uint8(out.x, levels)
        pred, pred_mlp = judge.classify(done), judge.classify_mlp(done)
        each = np.repeat(truth, args.votes)
        rows.append(
            f"| RePaint R = {R}, J = {J} | {out.calls} | {np.mean(pred == each):.3f} | "
            f"{np.mean(pred_mlp == each):.3f} | {time.perf_counter() - start:.0f} |"
        )
        if args.votes > 1:  # the most frequent class of the completions of each digit
            votes = [
                np.bincount(p.reshape(-1, args.votes)[i], minlength=10).argmax()
                for p in (pred, pred_mlp)
                for i in range(len(truth))
            ]
            vote, vote_mlp = np.array(votes[: len(truth)]), np.array(votes[len(truth) :])
            rows.append(
                f"| same, majority of {args.votes} completions | | {np.mean(vote == truth):.3f} | "
                f"{np.mean(vote_mlp == truth):.3f} | |"
            )
        print(rows[-1], file=sys.stderr)
    if args.picture:
        picture(run, images, truth, mask, args)
    return "\n".join(rows)


def picture(run, images, truth, mask, args) -> None:
    """One test digit per class: the true digit, its top half, then six completions (RePaint R, J)."""
    from ddpmkit.images import make_trajectory_grid, save_png, to_uint8
    from ddpmkit.runs.editing import inpaint

    first = [int(np.flatnonzero(truth == k)[0]) for k in range(10)]
    out = inpaint(
        run,
        images[first],
        mask,
        num=6,
        resample=args.resample,
        jump=args.jump,
        steps=args.steps,
        precision="fp32",
        seed=1,
    )
    levels = run.config.sample.levels
    rows = [to_uint8(torch.cat([images[i : i + 1], r]), levels) for i, r in zip(first, out.rows)]
    save_png(args.picture, make_trajectory_grid(rows, scale=6))


def pictures(args) -> str:
    """SDEdit of held-out 3s towards the label 8 (picture and judge table), and a 3-to-8 interpolation."""
    from ddpmkit.eval.digits import get_judge
    from ddpmkit.images import make_trajectory_grid, save_png, to_uint8
    from ddpmkit.runs.editing import edit, interpolate

    torch.set_num_threads(args.threads)
    run = ddpmkit.Run.load(args.run)
    judge = get_judge(0)
    split, levels = judge.split, run.config.sample.levels
    threes = np.flatnonzero(split.test_labels == 3)
    pick = [int(threes[0]), int(np.flatnonzero(split.test_labels == 8)[0])]
    images = torch.from_numpy(split.test_images.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    rows, table = [], ["| strength | network calls | mean change | judged 3 | judged 8 |", "|---:|---:|---:|---:|---:|"]
    for s in STRENGTHS:
        out = edit(run, images[threes], s, num=4, labels="8", precision="fp32", seed=1)
        pred = judge.classify(to_uint8(out.x, levels))
        change = float((out.x - images[threes].repeat_interleave(4, 0)).abs().mean()) / 2  # in units of the range
        table.append(f"| {s} | {out.calls} | {change:.3f} | {np.mean(pred == 3):.2f} | {np.mean(pred == 8):.2f} |")
        rows.append(to_uint8(out.rows[0][:7], levels))
    save_png(f"{args.out_dir}/edit_digits.png", make_trajectory_grid(rows, scale=6))
    strip = interpolate(run, images=images[pick], frames=8, precision="fp32")
    save_png(
        f"{args.out_dir}/interpolation_digits.png", make_trajectory_grid([to_uint8(strip.rows[0], levels)], scale=6)
    )
    return f"{len(threes)} held-out 3s, 4 edits each, labels 8, {run.config.sample.sampler}\n\n" + "\n".join(table)


STRENGTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    g = sub.add_parser("gaussian")
    g.add_argument("--samples", type=int, default=2000)
    d = sub.add_parser("digits")
    d.add_argument("--run", required=True, help="a trained digits run directory or checkpoint")
    d.add_argument("--steps", type=int, default=50)
    d.add_argument("--resample", type=int, default=4)
    d.add_argument("--jump", type=int, default=5)
    d.add_argument("--num", type=int, default=360, help="the first N held-out test digits")
    d.add_argument(
        "--votes", type=int, default=1, help="completions per digit (accuracy of each, and of their majority)"
    )
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--picture", help="write the picture of completions here (PNG)")
    q = sub.add_parser("pictures")
    q.add_argument("--run", required=True, help="a trained digits run directory or checkpoint")
    q.add_argument("--out-dir", default="docs")
    q.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.part == "gaussian":
        torch.set_num_threads(1)
        print("## RePaint against the exact conditional\n\n" + inpainting_table(args.samples))
        print("\n## SDEdit with the exact predictor\n\n" + sdedit_table(2 * args.samples))
    elif args.part == "pictures":
        print(pictures(args))
    else:
        print(digits(args))


if __name__ == "__main__":
    main()
