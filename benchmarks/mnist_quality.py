"""MNIST at an equal compute budget: ddpmkit's ``mnist`` preset against diffusers, scored by FID/KID/PR.

    python benchmarks/mnist_quality.py [--budget-min 20] [--num 2000] [--num-quarters N] [--work runs/mnist_bench]
                                       [--ref test_features.npz] [--set KEY=VALUE ...] [--no-diffusers]
                                       [--calls K] [--preset]

``--set`` changes ddpmkit's recipe on top of the preset (``train.ema_kind=power`` also writes snapshots, for
``ddpmkit ema --sweep``); ``--calls`` is each model's network calls per sample; ``--no-diffusers`` trains and scores
ddpmkit alone; ``--preset`` trains the ``mnist`` preset as ``ddpmkit train --preset mnist`` does (its own steps,
warm-up, EMA and grids, its CPU time recorded) instead of planning steps for the budget.

What it does (every stage caches its result in --work, so a rerun continues where it stopped):

1. Reference: Inception features of the 10k MNIST test images (or the first ``--test-num``) (``--ref``: a features
   file written by ``ddpmkit stats mnist --split test --features``), and of ``--num`` random training images: the
   real-data floor.
2. Training, both at once, one thread each, ``--budget-min`` minutes of CPU time each (process time,
   so other jobs on the machine do not change the budget):
   - ddpmkit: the ``mnist`` preset through ``ddpmkit.runs.train``; its steps are planned from a
     short calibration so that training fills the budget; warm-up and EMA scaled to that length.
   - diffusers: ``UNet2DModel`` + ``DDPMScheduler`` with the recipe of its unconditional training
     example (AdamW lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, 500 warm-up steps then cosine,
     batch 16, gradient clipping 1.0, ``EMAModel`` with warm-up (inv_gamma 1, power 3/4, max
     0.9999), MSE on the noise, fp32), class labels through ``num_class_embeds``; a network of about
     ddpmkit's size (blocks 32-64-64, attention at 8x8). Both pad 28x28 to 32x32 with the background.
3. Sampling: ``--num`` class-conditional samples (classes cycled) from each with its best sampler
   in ``--calls`` calls (50): ddpmkit's DPM-Solver++(2M), diffusers' ``DPMSolverMultistepScheduler`` (also 2M); no
   guidance. ddpmkit also after 1/4, 1/2 and 3/4 of its steps (time to quality; the table gives
   each checkpoint's share of ddpmkit's CPU time, so an overrun of the plan is compared fairly).
4. Scores: FID against the 10k test statistics, KID (against the test features) with its standard
   error, precision/recall (k = 3, against ``--num`` random test images); the same for the floor.

It writes --work/result.json, prints the table and saves a 10x10 picture of each model's samples
in --docs (mnist_ddpmkit.png, mnist_diffusers.png).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve()
CALIBRATION_STEPS = (10, 30)


def _save_json(path: Path, obj: dict) -> None:
    from ddpmkit.files import write_text

    write_text(path, json.dumps(obj, indent=2) + "\n")


def _mnist(split: str):
    from ddpmkit.data import load_dataset

    return load_dataset("mnist", split=split)


# --------------------------------------------------------------------------- ddpmkit training
def _ddpmkit_config(steps: int, run_dir_name: str, recipe: list[str] | None = None):
    """The ``mnist`` preset at ``steps``, warm-up and EMA scaled to them, then the ``--set`` assignments ``recipe``."""
    from ddpmkit import load_config
    from ddpmkit.config import deep_merge, parse_assignments

    chosen = parse_assignments(recipe)
    power = chosen.get("train", {}).get("ema_kind") == "power"  # then snapshots every eighth, for `ddpmkit ema`
    return load_config(
        "mnist",
        overrides=deep_merge(
            {
                "name": run_dir_name,
                "train": {
                    "steps": steps,
                    "warmup_steps": max(1, steps // 20),
                    "ema_start": steps // 10,
                    "ema_decay": 0.995 if steps < 2000 else 0.999,
                    "sample_every": 0,
                    "checkpoint_every": max(1, steps // 4),
                    "keep_checkpoints": 0,
                    "log_every": max(1, min(50, steps // 4)),
                    **({"ema_snapshot_every": max(1, steps // 8)} if power else {}),
                },
            },
            chosen,
        ),
    )


def _cpu_of_training(steps: int, run_dir: Path, recipe: list[str] | None) -> float:
    from ddpmkit.runs import train

    began = time.process_time()
    train(_ddpmkit_config(steps, "calibration", recipe), run_dir, force=True, progress=False, log=None)
    return time.process_time() - began


def _planned_steps(work: Path, budget_s: float, recipe: list[str] | None) -> tuple[int, float, float]:
    """The steps that fill ``budget_s`` of CPU time, from two short calibration runs; their cost per step and CPU."""
    short, long = (_cpu_of_training(n, work / f"calibrate{n}", recipe) for n in CALIBRATION_STEPS)
    per_step = (long - short) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
    overhead = short - CALIBRATION_STEPS[0] * per_step
    return max(8, int((budget_s - overhead) / per_step)), per_step, short + long


def preset_config(recipe: list[str] | None = None):
    """The ``mnist`` preset as ``ddpmkit train --preset mnist`` trains it (its own steps, warm-up, EMA and grids)."""
    from ddpmkit import load_config
    from ddpmkit.config import parse_assignments

    return load_config("mnist", overrides=parse_assignments(recipe))


def ddpmkit_child(work: Path, budget_s: float | None, recipe: list[str] | None = None) -> None:
    """Calibrate ddpmkit's cost per step, then train the preset (with ``recipe``) for the steps that fill the budget;
    ``budget_s`` None: the preset as it is, however long it takes."""
    from ddpmkit.runs import train

    if budget_s is None:
        cfg, per_step, calibration = preset_config(recipe), None, None
    else:
        steps, per_step, calibration = _planned_steps(work, budget_s, recipe)
        cfg = _ddpmkit_config(steps, "ddpmkit", recipe)
    began_cpu, began = time.process_time(), time.time()
    train(cfg, work / "ddpmkit", force=True, progress=False, log=None)
    _save_json(
        work / "ddpmkit" / "budget.json",
        {
            "steps": cfg.train.steps,
            "cpu_s": time.process_time() - began_cpu,
            "wall_s": time.time() - began,
            "cpu_per_step_s": per_step,
            "batch_size": cfg.train.batch_size,
            "calibration_cpu_s": calibration,
            "recipe": recipe or [],
        },
    )


# --------------------------------------------------------------------------- diffusers training
def diffusers_model():
    """A UNet2DModel of about ddpmkit's preset's size, class-conditional, at 32x32."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        norm_num_groups=8,
        num_class_embeds=10,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def _padded(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, 28, 28] -> float [-1, 1] [N, 1, 32, 32], padded with the background."""
    x = images.float() / 127.5 - 1.0
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)


class _DiffusersRecipe:
    """One optimizer step of the diffusers unconditional example's recipe (labels added)."""

    def __init__(self, planned_steps: int):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        torch.manual_seed(0)
        self.model = diffusers_model()
        self.noise = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
        self.lr = get_scheduler("cosine", optimizer=self.opt, num_warmup_steps=500, num_training_steps=planned_steps)
        self.ema = EMAModel(
            self.model.parameters(),
            decay=0.9999,
            use_ema_warmup=True,
            inv_gamma=1.0,
            power=0.75,
            model_cls=type(self.model),
            model_config=self.model.config,
        )

    def step(self, x0: torch.Tensor, y: torch.Tensor) -> float:
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],))
        pred = self.model(self.noise.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.lr.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        return float(loss.detach())


def _batches(data: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
    """Shuffled epochs of (x0, y), forever."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield _padded(data[idx]), labels[idx]


def diffusers_child(work: Path, budget_s: float) -> None:
    """Train the diffusers recipe until its CPU time reaches the budget (steps planned from a calibration)."""
    ds = _mnist("train")
    batches = _batches(ds.data, ds.labels, 16, seed=0)
    probe = _DiffusersRecipe(planned_steps=10_000)  # calibration, not counted (as ddpmkit's is not)
    t0 = time.process_time()
    for _ in range(20):
        probe.step(*next(batches))
    per_step = (time.process_time() - t0) / 20
    planned = max(8, int(budget_s / per_step))
    began_cpu, began = time.process_time(), time.time()
    recipe, losses = _DiffusersRecipe(planned), []
    batches = _batches(ds.data, ds.labels, 16, seed=0)
    while len(losses) < planned and time.process_time() - began_cpu < budget_s:
        losses.append(recipe.step(*next(batches)))
    recipe.ema.copy_to(recipe.model.parameters())
    out = work / "diffusers"
    out.mkdir(parents=True, exist_ok=True)
    torch.save(recipe.model.state_dict(), out / "ema.pt")
    _save_json(
        out / "budget.json",
        {
            "steps": len(losses),
            "planned_steps": planned,
            "cpu_s": time.process_time() - began_cpu,
            "wall_s": time.time() - began,
            "cpu_per_step_s": per_step,
            "batch_size": 16,
            "final_loss_mean_100": float(np.mean(losses[-100:])),
        },
    )


def train_both(work: Path, budget_s: float, recipe: list[str], who: tuple[str, ...], preset: bool = False) -> None:
    """The trainings of ``who`` at once, one thread each, in child processes (``preset``: ddpmkit's is the whole
    preset, whatever the budget)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sets = [arg for a in recipe for arg in ("--set", a)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE), "--child", w, "--work", str(work), "--budget-s", str(budget_s), *sets]
            + (["--preset"] if preset and w == "ddpmkit" else []),
            env=env,
        )
        for w in who
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f"a training child failed: exit codes {codes}")


# --------------------------------------------------------------------------- sampling
def sample_ddpmkit(checkpoint: Path, num: int, calls: int | None = None) -> np.ndarray:
    """uint8 NHWC samples, classes cycled, with the run's sampler (the preset's: DPM-Solver++(2M)) in ``calls``
    network calls (None: the run's, 50 for the preset)."""
    from ddpmkit import Run
    from ddpmkit.images import to_uint8

    run = Run.load(checkpoint)
    return to_uint8(run.sample(num, labels="all", seed=0, batch_size=500, steps=calls).x)


@torch.inference_mode()
def sample_diffusers(weights: Path, num: int, calls: int = 50, batch_size: int = 500) -> np.ndarray:
    """uint8 NHWC samples from the diffusers EMA model with DPMSolverMultistepScheduler in ``calls`` steps."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    model = diffusers_model()
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    # unclipped: clipping x0 (thresholding=True, sample_max_value=1) measured worse, FID-1k 239 vs 203
    sched = DPMSolverMultistepScheduler.from_config(DDPMScheduler(num_train_timesteps=1000).config)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        gen = torch.Generator().manual_seed(start)
        x = torch.randn(n, 1, 32, 32, generator=gen)
        y = torch.arange(start, start + n) % 10
        sched.set_timesteps(calls)
        for t in sched.timesteps:
            x = sched.step(model(x, t, class_labels=y).sample, t, x).prev_sample
        x = x[:, :, 2:30, 2:30].clamp(-1, 1)
        out.append(((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _quarters(steps: int) -> list[tuple[str, int]]:
    """ddpmkit's scored checkpoints: after 1/4, 1/2 and 3/4 of its steps (as checkpoint_every saves them), and all."""
    q = max(1, steps // 4)
    return [("q1", q), ("q2", 2 * q), ("q3", 3 * q), ("all", steps)]


def sample_sets(
    work: Path, num: int, num_quarters: int, calls: int | None = None, diffusers: bool = True
) -> dict[str, tuple[Path, int]]:
    """Every sample set as (cached npz file, samples scored): ddpmkit at 1/4, 1/2, 3/4 (``num_quarters``
    samples each, none if 0) and all of its steps, diffusers (``num`` each)."""
    from ddpmkit.images import load_npz, save_npz

    steps = json.loads((work / "ddpmkit" / "budget.json").read_text())["steps"]
    ckpts = {f"ddpmkit_{name}": work / "ddpmkit" / "checkpoints" / f"step_{s:08d}.pt" for name, s in _quarters(steps)}
    if num_quarters == 0:
        ckpts = {"ddpmkit_all": ckpts["ddpmkit_all"]}
    sets = {}
    for name, ckpt in {**ckpts, **({"diffusers": work / "diffusers" / "ema.pt"} if diffusers else {})}.items():
        path, n = work / f"samples_{name}.npz", num if name in ("ddpmkit_all", "diffusers") else num_quarters
        if not path.exists():
            began = time.time()
            if name == "diffusers":
                images = sample_diffusers(ckpt, n, calls or 50)
            else:
                images = sample_ddpmkit(ckpt, n, calls)
            save_npz(path, images, np.arange(n) % 10)
            print(f"sampled {name}: {n} in {time.time() - began:.0f} s", flush=True)
        if load_npz(path)[0].shape[0] < n:
            sys.exit(f"{path} holds fewer than the {n} samples asked for: delete it to draw them again")
        sets[name] = (path, n)
    return sets


# --------------------------------------------------------------------------- scoring
def features_of(net, images_nhwc: np.ndarray, cache: Path) -> np.ndarray:
    """Inception features of uint8 NHWC images, cached."""
    if cache.exists():
        return np.load(cache)["features"]
    feats = net.features(images_nhwc, layout="NHWC", progress=True)
    np.savez(cache, features=feats)
    return feats


def scores(feats: np.ndarray, test: np.ndarray, test_pr: np.ndarray) -> dict:
    from ddpmkit.eval import metrics

    mu, sigma = test.mean(0), np.cov(test, rowvar=False)
    kid, kid_se = metrics.kid_with_stderr(feats, test, 100, 1000, 0)
    precision, recall = metrics.precision_recall(test_pr, feats, k=3)
    return {
        "fid": metrics.gaussian_frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), mu, sigma),
        "kid": kid,
        "kid_stderr": kid_se,
        "precision": precision,
        "recall": recall,
    }


def score_all(work: Path, sets: dict[str, tuple[Path, int]], ref: Path | None, num: int, test_num: int = 10000) -> dict:
    """Scores of every set and of the floor; sets scored on fewer samples also get the final models'
    scores on their first that many samples (``NAME@N``), since FID's bias depends on N."""
    from ddpmkit.eval.inception import InceptionFeatures
    from ddpmkit.eval.quality import load_stats
    from ddpmkit.images import load_npz

    net = InceptionFeatures()
    if ref is not None:
        test = load_stats(ref)["features"]
    else:
        test_images = _mnist("test").data[:test_num].permute(0, 2, 3, 1).numpy()  # the split's first test_num
        test = features_of(net, test_images, work / f"features_test{len(test_images)}.npz")
    pick = np.random.default_rng(0)
    test_pr = test[pick.choice(len(test), num, replace=False)]
    train = _mnist("train").data
    floor_images = train[torch.from_numpy(pick.choice(len(train), num, replace=False))].permute(0, 2, 3, 1).numpy()
    result = {"floor": scores(features_of(net, floor_images, work / f"features_floor-n{num}.npz"), test, test_pr)}
    feats = {}
    for name, (path, n) in sets.items():
        images = load_npz(path)[0][:n]  # classes cycle, so the first n are balanced
        feats[name] = features_of(net, images, work / f"features_{name}-n{n}.npz")
        result[name] = scores(feats[name], test, test_pr[:n])
    for n in sorted({n for _, n in sets.values() if n < num}):
        for name in [k for k in ("ddpmkit_all", "diffusers") if k in feats]:  # their first n images' features
            result[f"{name}@{n}"] = scores(feats[name][:n], test, test_pr[:n])
    result["inception_images_per_s"] = net.last_images_per_s
    return result


# --------------------------------------------------------------------------- report
def table(result: dict, budgets: dict, sizes: dict[str, int]) -> str:
    rows = ["| set | CPU time | samples | FID | KID x1e3 | precision | recall |", "|---|---|---|---|---|---|---|"]
    cpu, steps = budgets["ddpmkit"]["cpu_s"], budgets["ddpmkit"]["steps"]
    when = {f"ddpmkit_{name}": cpu * s / steps for name, s in _quarters(steps)}
    when.update(floor=None, **({"diffusers": budgets["diffusers"]["cpu_s"]} if "diffusers" in budgets else {}))
    for key in sorted(result, key=lambda k: (k.partition("@")[2] != "", k.partition("@")[2])):
        name, _, n = key.partition("@")
        if name not in when:
            continue
        r, t = result[key], when[name]
        rows.append(
            f"| {name} | {'-' if t is None else f'{t / 60:.1f} min'} | {n or sizes[name]} | {r['fid']:.2f} | "
            f"{1e3 * r['kid']:.2f} ± {1e3 * r['kid_stderr']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |"
        )
    return "\n".join(rows)


def pictures(work: Path, sets: dict[str, tuple[Path, int]], out_dir: Path) -> None:
    """A 10x10 grid of each model's final samples (one class per column)."""
    from ddpmkit.images import load_npz, make_grid, save_png

    for name in [k for k in ("ddpmkit_all", "diffusers") if k in sets]:
        images = load_npz(sets[name][0])[0][:100]
        save_png(out_dir / f"mnist_{name.split('_')[0]}.png", make_grid(images, nrow=10, padding=2, scale=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-min", type=float, default=20.0, help="CPU minutes of training for each")
    p.add_argument("--num", type=int, default=2000, help="samples of each final model (and floor images)")
    p.add_argument("--num-quarters", type=int, help="samples of ddpmkit after 1/4, 1/2 and 3/4 (default: --num)")
    p.add_argument("--work", type=Path, default=Path("runs/mnist_bench"))
    p.add_argument("--ref", type=Path, help="test-split features (ddpmkit stats mnist --split test --features)")
    p.add_argument("--test-num", type=int, default=10000, help="without --ref: the first N test images as reference")
    p.add_argument("--docs", type=Path, default=HERE.parent.parent / "docs")
    p.add_argument("--set", dest="recipe", action="append", default=[], metavar="KEY=VALUE", help="ddpmkit's recipe")
    p.add_argument("--no-diffusers", action="store_true", help="train and score ddpmkit only")
    p.add_argument("--calls", type=int, help="network calls per sample of each model (default: 50, the preset's)")
    p.add_argument(
        "--preset",
        action="store_true",
        help="ddpmkit trains the mnist preset as it is (its 3,000 steps), not for --budget-min; no quarters scored",
    )
    p.add_argument("--child", choices=["ddpmkit", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--budget-s", type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.child:
        torch.set_num_threads(1)
        if a.child == "ddpmkit":
            ddpmkit_child(a.work, None if a.preset else a.budget_s, a.recipe)
        else:
            diffusers_child(a.work, a.budget_s)
        return
    who = ("ddpmkit",) if a.no_diffusers else ("ddpmkit", "diffusers")
    if any(not (a.work / w / "budget.json").exists() for w in who):
        train_both(a.work, a.budget_min * 60, a.recipe, who, a.preset)
    budgets = {w: json.loads((a.work / w / "budget.json").read_text()) for w in who}
    quarters = 0 if a.preset else a.num if a.num_quarters is None else a.num_quarters
    sets = sample_sets(a.work, a.num, quarters, a.calls, not a.no_diffusers)
    result = score_all(a.work, sets, a.ref, a.num, a.test_num)
    _save_json(
        a.work / "result.json",
        {
            "num": a.num,
            "num_quarters": quarters,
            "calls": a.calls,
            "test_num": a.test_num if a.ref is None else None,
            "budgets": budgets,
            "scores": result,
        },
    )
    pictures(a.work, sets, a.docs)
    print(json.dumps(budgets, indent=1))
    sizes = {name: n for name, (_, n) in sets.items()}
    print(table(result, budgets, {**sizes, "floor": a.num}))


if __name__ == "__main__":
    main()
