"""Few-call sampling on MNIST: the ``mnist`` preset as teacher against its ECT-tuned consistency model.

    python benchmarks/consistency_quality.py [--work runs/cm_bench] [--num 2000] [--test-num 10000]
                                             [--tune-steps N] [--docs docs]

What it does (every stage caches its result in --work, so a rerun continues where it stopped):

1. Teacher: ``ddpmkit train --preset mnist --out WORK/teacher`` (resumed if partial); its CPU time (user +
   system of the child, so other jobs on the machine do not change it) goes to WORK/teacher/cost.json.
2. Tuning: ``ddpmkit distill WORK/teacher --method ect --out WORK/cm [--steps N]``, its CPU time likewise;
   the table gives it as a fraction of the teacher's.
3. Sampling: ``--num`` class-conditional samples (classes cycled, sample i seeded i) of
   - the teacher at 50 calls (its preset's DPM-Solver++(2M)), 10 calls (UniPC-bh1) and 2 calls
     (DPM-Solver++(2M), the best of the solvers at 2 calls on the 2-D mixtures of tests/maths), and
   - the consistency model at 1, 2 and 4 calls,
   each timed (images/s on this machine's threads, wall clock).
4. Scores: FID against the first ``--test-num`` test images, KID with its standard error and
   precision/recall (k = 3) against ``--num`` random test images; the floor is ``--num`` random training
   images. Inception features are cached per set.

It writes WORK/result.json, prints the table and saves a 10x10 grid of the first 100 samples (one class
per column) of the teacher at 50 and 2 calls and the tuned model at 1 and 2 as docs/consistency_mnist_<set>.png.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from mnist_quality import _mnist, _save_json, features_of, scores  # noqa: E402  (the same scoring as its table)

# name -> (model, Run.sample options); the teacher's 50-call set is its preset's sampler
SETS: dict[str, tuple[str, dict]] = {
    "teacher_50": ("teacher", {}),
    "teacher_10": ("teacher", {"sampler": "unipc-bh1", "steps": 10}),
    "teacher_2": ("teacher", {"sampler": "dpm++2m", "steps": 2}),
    "cm_1": ("cm", {"steps": 1}),
    "cm_2": ("cm", {"steps": 2}),
    "cm_4": ("cm", {"steps": 4}),
}


PICTURED = ("teacher_50", "teacher_2", "cm_1", "cm_2")  # the sets docs/consistency.md shows


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_command(argv: list[str], cost_file: Path) -> dict:
    """Run a ddpmkit command line to its end; record its CPU and wall time (added to an earlier partial run's)."""
    before = json.loads(cost_file.read_text()) if cost_file.exists() else {"cpu_s": 0.0, "wall_s": 0.0}
    cpu0, wall0 = _children_cpu_s(), time.time()
    code = subprocess.call([sys.executable, "-m", "ddpmkit", *argv])
    cost = {"cpu_s": before["cpu_s"] + _children_cpu_s() - cpu0, "wall_s": before["wall_s"] + time.time() - wall0}
    cost_file.parent.mkdir(parents=True, exist_ok=True)
    _save_json(cost_file, cost)
    if code:
        sys.exit(f"ddpmkit {' '.join(argv)} exited {code}")
    return cost


def _finished(run_dir: Path) -> bool:
    from ddpmkit.runs.rundir import RunDir
    from ddpmkit.train.checkpoint import read_checkpoint

    latest = RunDir(run_dir).latest_checkpoint()
    if latest is None:
        return False
    ckpt = read_checkpoint(latest)
    return int(ckpt["step"]) >= int(ckpt["config"]["train"]["steps"])


def train_models(work: Path, teacher_steps: int | None, tune_steps: int | None, only_teacher: bool = False) -> dict:
    """The teacher and its consistency model, trained (or finished) here; their CPU costs."""
    teacher, cm = work / "teacher", work / "cm"
    if not _finished(teacher):
        resume = ["--resume"] if teacher.exists() else []
        steps = [] if teacher_steps is None else ["--steps", str(teacher_steps)]
        argv = ["train", "--preset", "mnist", "--out", str(teacher), "--no-progress", *steps, *resume]
        _timed_command(argv, teacher / "cost.json")
    if only_teacher:
        return {}
    if not _finished(cm):
        steps = [] if tune_steps is None else ["--steps", str(tune_steps)]
        resume = ["--resume"] if cm.exists() else []
        argv = ["distill", str(teacher), "--method", "ect", "--out", str(cm), "--no-progress", *steps, *resume]
        _timed_command(argv, cm / "cost.json")
    return {who: json.loads((work / who / "cost.json").read_text()) for who in ("teacher", "cm")}


def sample_sets(work: Path, num: int) -> dict[str, dict]:
    """Every set's samples (cached as WORK/samples_<set>.npz) and its sampling speed."""
    from ddpmkit import Run
    from ddpmkit.images import load_npz, save_npz, to_uint8

    speeds_file = work / "speeds.json"
    speeds = json.loads(speeds_file.read_text()) if speeds_file.exists() else {}
    runs = {}
    for name, (who, options) in SETS.items():
        path = work / f"samples_{name}.npz"
        if not path.exists() or name not in speeds:
            run = runs.get(who) or runs.setdefault(who, Run.load(work / who))
            began = time.time()
            samples = run.sample(num, labels="all", seed=0, batch_size=500, **options)
            seconds = time.time() - began
            save_npz(path, to_uint8(samples.x), np.arange(num) % 10)
            speeds[name] = {"calls": samples.steps, "images_per_s": num / seconds, "threads": torch.get_num_threads()}
            _save_json(speeds_file, speeds)
            print(f"sampled {name}: {num} in {seconds:.0f} s", flush=True)
        if load_npz(path)[0].shape[0] < num:
            sys.exit(f"{path} holds fewer than the {num} samples asked for: delete it to draw them again")
    return speeds


def reference_features(net, work: Path, num: int, test_num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inception features (cached) of the first ``test_num`` test images, ``num`` random ones of them for
    precision/recall, and ``num`` random training images (the floor)."""
    test_images = _mnist("test").data[:test_num].permute(0, 2, 3, 1).numpy()
    test = features_of(net, test_images, work / f"features_test{len(test_images)}.npz")
    pick = np.random.default_rng(0)
    test_pr = test[pick.choice(len(test), num, replace=False)]
    train = _mnist("train").data
    floor = train[torch.from_numpy(pick.choice(len(train), num, replace=False))].permute(0, 2, 3, 1).numpy()
    return test, test_pr, features_of(net, floor, work / f"features_floor-n{num}.npz")


def score_sets(work: Path, num: int, test_num: int) -> dict:
    """FID/KID/PR of every set and of the floor (training images)."""
    from ddpmkit.eval.inception import InceptionFeatures
    from ddpmkit.images import load_npz

    net = InceptionFeatures()
    test, test_pr, floor = reference_features(net, work, num, test_num)
    result = {"floor": scores(floor, test, test_pr)}
    for name in SETS:
        images = load_npz(work / f"samples_{name}.npz")[0][:num]
        result[name] = scores(features_of(net, images, work / f"features_{name}-n{num}.npz"), test, test_pr)
        print(f"scored {name}: FID {result[name]['fid']:.2f}", flush=True)
    return result


def table(result: dict, speeds: dict, costs: dict) -> str:
    """The markdown table: each set's calls, FID (and its ratio to the teacher's 50 calls), KID, PR, speed."""
    rows = [
        "| set | calls | FID | FID / teacher-50 | KID x1e3 | precision | recall | images/s | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref_fid, ref_speed = result["teacher_50"]["fid"], speeds["teacher_50"]["images_per_s"]
    for name in ("floor", *SETS):
        r, s = result[name], speeds.get(name)
        calls, rate = ("-", "-") if s is None else (s["calls"], f"{s['images_per_s']:.1f}")
        up = "-" if s is None else f"{s['images_per_s'] / ref_speed:.0f}x"
        rows.append(
            f"| {name} | {calls} | {r['fid']:.2f} | {r['fid'] / ref_fid:.2f} | {1e3 * r['kid']:.2f} ± "
            f"{1e3 * r['kid_stderr']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {rate} | {up} |"
        )
    share = costs["cm"]["cpu_s"] / costs["teacher"]["cpu_s"]
    rows.append("")
    rows.append(
        f"CPU time: teacher {costs['teacher']['cpu_s'] / 60:.1f} min, tuning {costs['cm']['cpu_s'] / 60:.1f} min "
        f"({100 * share:.1f}% of the teacher's)."
    )
    return "\n".join(rows)


def pictures(work: Path, docs: Path) -> None:
    """A 10x10 grid of each set's first 100 samples (one class per column)."""
    from ddpmkit.images import load_npz, make_grid, save_png

    for name in PICTURED:
        images = load_npz(work / f"samples_{name}.npz")[0][:100]
        save_png(docs / f"consistency_mnist_{name}.png", make_grid(images, nrow=10, padding=2, scale=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/cm_bench"))
    p.add_argument("--num", type=int, default=2000, help="samples of each set (and floor images)")
    p.add_argument("--test-num", type=int, default=10000, help="the first N test images as FID's reference")
    p.add_argument("--teacher-steps", type=int, help="the teacher's steps (default: the mnist preset's)")
    p.add_argument("--tune-steps", type=int, help="the tuning's steps (default: the distill preset's)")
    p.add_argument("--docs", type=Path, default=HERE.parent.parent / "docs")
    p.add_argument(
        "--stop-after", choices=["teacher", "train", "sample"], help="stop after this stage (to score later)"
    )
    p.add_argument("--reference-only", action="store_true", help="only the reference features (while training)")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.reference_only:
        from ddpmkit.eval.inception import InceptionFeatures

        reference_features(InceptionFeatures(), a.work, a.num, a.test_num)
        return
    costs = train_models(a.work, a.teacher_steps, a.tune_steps, a.stop_after == "teacher")
    if a.stop_after in ("teacher", "train"):
        return
    speeds = sample_sets(a.work, a.num)
    pictures(a.work, a.docs)
    if a.stop_after == "sample":
        return
    result = score_sets(a.work, a.num, a.test_num)
    _save_json(
        a.work / "result.json",
        {"num": a.num, "test_num": a.test_num, "costs": costs, "speeds": speeds, "scores": result},
    )
    print(table(result, speeds, costs))


if __name__ == "__main__":
    main()
