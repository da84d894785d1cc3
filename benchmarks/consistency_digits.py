"""Few-call sampling on the digits: a digits teacher against its ECT-tuned consistency model, by the digits judge.

    python benchmarks/consistency_digits.py TEACHER_RUN CM_RUN [--num 1000] [--mids 0.3,0.5,0.821,1.5,3]
                                            [--teacher-samples SAMPLES.npz] [--out result.json] [--pictures DIR]

Draws ``--num`` class-conditional samples (classes cycled, sample i seeded i) from the teacher at 50 calls
(its preset's sampler; or reads them from ``--teacher-samples``) and at 2 calls (DPM-Solver++(2M)), and from
the consistency model at 1, 2 and 4 calls, and at 2 calls with each intermediate level of ``--mids`` (the
sigma the sampler re-noises to between its calls); scores each with ``ddpmkit eval --metric digits``'s
report (class accuracy, Fréchet distance and KID in the judge's features) and times it. Prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def _with_mid(run, mid: float):
    """The consistency run sampling its two calls through the intermediate level ``mid``."""
    distill = dataclasses.replace(run.config.distill, mid_sigmas=(mid,))
    return dataclasses.replace(run, config=dataclasses.replace(run.config, distill=distill))


def _row(name: str, run, num: int, judge, options: dict, pictures: Path | None = None) -> dict:
    from ddpmkit.eval.digits import evaluate_digit_samples
    from ddpmkit.images import make_grid, save_png, to_uint8

    began = time.time()
    samples = run.sample(num, labels="all", seed=0, batch_size=500, **options)
    seconds = time.time() - began
    images, labels = to_uint8(samples.x, run.config.sample.levels), samples.labels.numpy()
    if pictures is not None and " " not in name:  # a 10x10 grid, one class per column
        save_png(pictures / f"consistency_digits_{name}.png", make_grid(images[:100], nrow=10, padding=1, scale=4))
    report = evaluate_digit_samples(images, labels, judge=judge)
    return {"set": name, "calls": samples.steps, "images_per_s": num / seconds, **_scores(report)}


def _scores(report: dict) -> dict:
    keys = ("accuracy", "accuracy_mlp", "fd_features", "fd_features_floor", "kid_features", "copy_fraction")
    return {k: report[k] for k in keys if k in report}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher", type=Path)
    p.add_argument("cm", type=Path)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--mids", default="0.3,0.5,0.821,1.5,3.0", help="intermediate levels to try at 2 calls")
    p.add_argument("--teacher-samples", type=Path, help="the teacher's 50-call samples (.npz), instead of drawing")
    p.add_argument("--out", type=Path)
    p.add_argument("--pictures", type=Path, help="a folder for a grid of each set (consistency_digits_<set>.png)")
    a = p.parse_args()

    from ddpmkit import Run
    from ddpmkit.eval.digits import evaluate_digit_samples, get_judge
    from ddpmkit.images import load_npz

    judge, teacher, cm = get_judge(0), Run.load(a.teacher), Run.load(a.cm)
    rows = []
    if a.teacher_samples:
        images, labels = load_npz(a.teacher_samples)
        report = evaluate_digit_samples(images[: a.num], None if labels is None else labels[: a.num], judge=judge)
        rows.append({"set": "teacher_50 (file)", "calls": 50, "images_per_s": None, **_scores(report)})
    else:
        rows.append(_row("teacher_50", teacher, a.num, judge, {}, a.pictures))
    rows.append(_row("teacher_2", teacher, a.num, judge, {"sampler": "dpm++2m", "steps": 2}, a.pictures))
    for calls in (1, 2, 4):
        rows.append(_row(f"cm_{calls}", cm, a.num, judge, {"steps": calls}, a.pictures))
    for mid in (float(m) for m in a.mids.split(",")):
        rows.append(_row(f"cm_2 mid {mid:g}", _with_mid(cm, mid), a.num, judge, {"steps": 2}))
    print("| set | calls | accuracy | accuracy (MLP) | FD features | KID features | images/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rate = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"
        print(
            f"| {r['set']} | {r['calls']} | {r['accuracy']:.3f} | {r['accuracy_mlp']:.3f} | "
            f"{r['fd_features']:.3f} | {r['kid_features']:.4f} | {rate} |"
        )
    if a.out:
        a.out.write_text(json.dumps({"num": a.num, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
