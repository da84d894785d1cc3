"""Editing with a trained run: inpainting, image-to-image and interpolation, images and masks read at its size.

    run = ddpmkit.Run.load("runs/digits")
    images = read_images("three.png", run)
    out = edit(run, images, strength=0.6, labels="8")          # SDEdit: turn a 3 into an 8
    out = inpaint(run, images, read_mask("mask.png", run, 1), num=8, resample=5, jump=5)
    out = interpolate(run, seeds=(0, 1), frames=8)

Inputs: a PNG (grey "L" for a 1-channel run, "RGB" for a 3-channel one) or a ``.npz`` with
``images`` uint8 [N, H, W, C] as ``ddpmkit sample`` writes. Masks: white (255) = known pixel,
kept; black (0) = generated (RePaint's convention), as a PNG or a ``.npz`` with ``mask`` of 0/1.
Result j uses the seed ``seed + j`` whatever the batch size. Every input is checked before the
first network call. A class-conditional run without ``labels`` edits unconditionally (its null
label) where it was trained with one (``diffusion.p_uncond > 0``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..editing import check_inpaint_sampler, edit_timesteps, repaint_schedule, slerp_frames
from ..errors import UserError
from ..images import load_npz, make_trajectory_grid, read_npz, save_npz, save_png, tile_scale, to_uint8, uint8_to_float
from ..options import Precision, SamplerName, Spacing
from ..samplers import randn, seeded_generators
from ..sampling_options import SamplingOptions
from ..train.runtime import autocast_context, autocast_dtype
from ..validate import check_guidance, check_seed, int_in_range
from .consistency_model import check_consistency_options, edit_consistency, is_consistency, sample_consistency
from .run import Run
from .sampling import Labels, SamplingRequest, check_draws, check_steps, default_steps, parse_labels

__all__ = ["Edited", "read_images", "read_mask", "inpaint", "edit", "interpolate", "write_edited"]


class Edited(NamedTuple):
    """What an edit makes: the results, their labels, and the rows of its picture."""

    x: Tensor  # [N, C, H, W] results in [-1, 1], float32 on the CPU (input-major: input i, copy c is i * num + c)
    labels: Tensor | None  # int64 [N] the classes conditioned on, or None (unconditional)
    rows: list[Tensor]  # one row of the PNG picture per input: its input (masked) first, then its results
    calls: int  # network calls per result


# one batch of an edit: (its slice of the copies, their inputs, labels, generators) -> its results
EditBatch = Callable[[slice, Tensor, "Tensor | None", "list[torch.Generator]"], Tensor]


# --------------------------------------------------------------------------- inputs
def _image_run(run: Run, what: str) -> tuple[int, int, int]:
    if not run.is_image:
        raise UserError(f"{what} needs an image model; this run ({run.config.data.kind}) makes 2-D points")
    channels, height, width = run.sample_shape
    return channels, height, width


def read_images(path: str | Path, run: Run) -> Tensor:
    """Images [N, C, H, W] in [-1, 1] from a PNG (N = 1) or a samples ``.npz``, at the run's size and channels."""
    C, H, W = _image_run(run, "editing")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    if path.suffix.lower() == ".npz":
        arr, _ = load_npz(path)
        if len(arr) == 0:
            raise UserError(f"{path} holds no images")
    else:
        arr = _read_png(path, "L" if C == 1 else "RGB", "image")[None]
        arr = arr[..., None] if arr.ndim == 3 else arr
    if arr.shape[1:3] != (H, W) or arr.shape[3] != C:
        raise UserError(
            f"image {str(path)!r} is {arr.shape[2]}x{arr.shape[1]} with {arr.shape[3]} channel(s); "
            f"this run makes {W}x{H} images with {C}"
        )
    return uint8_to_float(torch.from_numpy(np.array(arr)).permute(0, 3, 1, 2))


def read_mask(path: str | Path, run: Run, count: int) -> Tensor:
    """A mask [1 or count, 1, H, W] of 0/1 (1 = known).

    From a black-and-white PNG, or a ``.npz`` holding ``mask`` [H, W] or [count, H, W].
    """
    C, H, W = _image_run(run, "inpainting")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask file not found: {path}")
    if path.suffix.lower() == ".npz":
        m = _read_npz_mask(path)
    else:
        arr = _read_png(path, "L", "mask").astype(np.int64)
        bad = arr[(arr != 0) & (arr != 255)]
        if bad.size:
            raise UserError(
                f"mask {str(path)!r} must be black (0: generate) and white (255: keep) only, "
                f"found the grey value {int(bad[0])}"
            )
        m = arr // 255
    m = m[None] if m.ndim == 2 else m
    if m.shape[1:] != (H, W) or m.shape[0] not in (1, count):
        raise UserError(
            f"mask {str(path)!r} has shape {tuple(m.shape)}; need [{H}, {W}] (this run's images)"
            + (f" or [{count}, {H}, {W}]" if count > 1 else "")
        )
    return torch.from_numpy(m.astype(np.float32))[:, None]


def _read_npz_mask(path: Path) -> np.ndarray:
    arrays = read_npz(path, "mask file")
    if "mask" not in arrays:
        raise UserError(f"no 'mask' array in {path}")
    m = arrays["mask"]
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.dtype != np.bool_ and not np.issubdtype(m.dtype, np.integer) and not np.issubdtype(m.dtype, np.floating):
        raise UserError(f"'mask' in {path} must be numbers 0/1, got {m.dtype}")
    if not np.isin(m, (0, 1)).all() or m.ndim not in (2, 3):
        raise UserError(f"'mask' in {path} must hold only 0 (generate) and 1 (keep), shaped [H, W] or [N, H, W]")
    return m.astype(np.int64)


def _read_png(path: Path, mode: str, what: str) -> np.ndarray:
    # deferred: PIL costs start-up and only reading a PNG needs it
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode == "1" and mode == "L":  # a 1-bit file is black and white already
                img = img.convert("L")
            if img.mode != mode:
                kind = "greyscale (mode L)" if mode == "L" else "RGB"
                raise UserError(f"{what} {str(path)!r} has mode {img.mode}; this needs {kind}: convert it first")
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read {what} {str(path)!r}: {e}") from None


# --------------------------------------------------------------------------- checks
def _conditioning(run: Run, labels: Labels, n: int, guidance: float | None) -> tuple[Tensor | None, float]:
    """Labels for n results and the guidance weight; a conditional run without labels uses its null label."""
    if run.num_classes is not None and labels is None:
        if run.config.diffusion.p_uncond <= 0:
            raise UserError("this class-conditional model was trained without a null label: give labels")
        if guidance not in (None, 1, 1.0):
            raise UserError("guidance needs labels (the class to guide towards)")
        return torch.full((n,), run.num_classes, dtype=torch.long), 1.0
    y = parse_labels(labels, n, run.num_classes, run.class_names)
    guidance = check_guidance((run.config.sample.guidance if y is not None else 1.0) if guidance is None else guidance)
    if guidance != 1.0 and y is None:
        raise UserError("guidance needs a class-conditional model")
    return y, float(guidance)


def _common(num: int, seed: int, batch_size: int, inputs: int) -> None:
    """The checks of every edit: ``num`` results of each of ``inputs`` images, result j seeded seed + j."""
    check_draws(num, seed, batch_size, "num", inputs * num)


def _steps(run: Run, sampler: str, steps: int | None) -> int | None:
    return check_steps(
        default_steps(sampler, run.config.sample) if steps is None else steps, run.diffusion.num_timesteps
    )


def _edit_batches(
    run: Run, inputs: Tensor, num: int, y: Tensor | None, seed: int, batch_size: int, precision, edit_batch: EditBatch
) -> Tensor:
    """``edit_batch`` over the input-major list of num copies of each input, a batch at a time under autocast: the
    results, float32 on the CPU; copy j is seeded seed + j whatever the batch size."""
    device = run.device
    x = inputs.repeat_interleave(num, dim=0)
    amp = autocast_dtype(precision or "auto", device)
    out = []
    for start in range(0, len(x), batch_size):
        part = slice(start, min(start + batch_size, len(x)))
        gens = seeded_generators(seed, range(part.start, part.stop), device)
        yb = None if y is None else y[part].to(device)
        with torch.no_grad(), autocast_context(device, amp):
            out.append(edit_batch(part, x[part].to(device), yb, gens).float().cpu())
    return torch.cat(out)


def _shown_labels(run: Run, y: Tensor | None) -> Tensor | None:
    return None if y is None or run.num_classes is None or bool(y.eq(run.num_classes).all()) else y


def _rows(shown: Tensor, x: Tensor, num: int) -> list[Tensor]:
    return [torch.cat([shown[i : i + 1], x[i * num : (i + 1) * num]]) for i in range(len(shown))]


# --------------------------------------------------------------------------- edits
def inpaint(
    run: Run,
    images: Tensor,
    mask: Tensor,
    *,
    num: int = 1,
    resample: int = 1,
    jump: int = 1,
    sampler: SamplerName = "ddpm",
    steps: int | None = None,
    eta: float | None = None,
    spacing: Spacing | None = None,
    labels: Labels = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    precision: Precision | None = None,
    progress: bool = False,
) -> Edited:
    """``num`` RePaint completions of each image where ``mask`` is 0 (see GaussianDiffusion.inpaint)."""
    _image_run(run, "inpainting")
    _common(num, seed, batch_size, len(images))
    int_in_range("resample", resample, 1)
    int_in_range("jump", jump, 1)
    opts = SamplingOptions(check_inpaint_sampler(sampler), _steps(run, sampler, steps), spacing, eta)
    if mask.shape[0] not in (1, len(images)):
        raise UserError(f"{mask.shape[0]} masks for {len(images)} images")
    masks = mask.expand(len(images), *mask.shape[1:]).repeat_interleave(num, dim=0)
    y, w = _conditioning(run, labels, len(images) * num, guidance)
    opts = dataclasses.replace(opts, guidance=w)
    complete = partial(
        run.diffusion.inpaint, run.model, resample=resample, jump_length=jump, progress=progress, options=opts
    )

    def completed(part: slice, x: Tensor, yb: Tensor | None, gens: list[torch.Generator]) -> Tensor:
        return complete(x, masks[part].to(x.device), y=yb, generator=gens)

    x = _edit_batches(run, images, num, y, seed, batch_size, precision, completed)
    m = mask.expand(len(images), *mask.shape[1:])
    sched = repaint_schedule(opts.calls(run.diffusion.num_timesteps), jump, resample)
    calls = sum(b < a for a, b in zip(sched, sched[1:]))
    return Edited(x, _shown_labels(run, y), _rows(images * m, x, num), calls)


def edit(
    run: Run,
    images: Tensor,
    strength: float,
    *,
    num: int = 1,
    sampler: SamplerName | None = None,
    steps: int | None = None,
    eta: float | None = None,
    spacing: Spacing | None = None,
    labels: Labels = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    precision: Precision | None = None,
    progress: bool = False,
) -> Edited:
    """SDEdit: ``num`` edits of each image at ``strength`` in [0, 1] (0: the image, 1: a new sample), any sampler;
    a consistency model makes ``steps`` calls (default: its sample.steps) whatever the strength."""
    _image_run(run, "image-to-image editing")
    _common(num, seed, batch_size, len(images))
    if is_consistency(run.config):
        calls = check_consistency_options(
            run.config.sample, SamplingRequest(sampler, steps, eta, spacing, guidance=guidance)
        )
        return _edit_consistency(run, images, strength, calls, num, labels, seed, batch_size, precision)
    sc = run.config.sample
    chosen = sampler or sc.sampler
    steps = _steps(run, chosen, steps)
    if eta is None and chosen == "ddim" and sc.sampler == "ddim":
        eta = sc.eta
    opts = SamplingOptions(chosen, steps, spacing or (sc.spacing if chosen == sc.sampler else None), eta)
    T = run.diffusion.num_timesteps
    kept = edit_timesteps(T, strength, opts.calls(T), opts.grid_spacing, run.diffusion.alphas_cumprod)
    y, w = _conditioning(run, labels, len(images) * num, guidance)
    opts = dataclasses.replace(opts, guidance=w)
    sdedit = partial(run.diffusion.edit, run.model, strength=strength, progress=progress, options=opts)

    def edited(_, x: Tensor, yb: Tensor | None, gens: list[torch.Generator]) -> Tensor:
        return sdedit(x, y=yb, generator=gens)

    x = _edit_batches(run, images, num, y, seed, batch_size, precision, edited)
    return Edited(x, _shown_labels(run, y), _rows(images, x, num), 0 if kept is None else len(kept))


def _edit_consistency(
    run: Run,
    images: Tensor,
    strength: float,
    calls: int,
    num: int,
    labels: Labels,
    seed: int,
    batch_size: int,
    precision,
) -> Edited:
    """A consistency model's SDEdit: noise to the strength's level, then ``calls`` jumps."""
    y, _ = _conditioning(run, labels, len(images) * num, None)
    used = [0]

    def jumps(_, x: Tensor, yb: Tensor | None, gens: list[torch.Generator]) -> Tensor:
        edited, used[0] = edit_consistency(run.config, run.model, run.diffusion, x, strength, calls, yb, gens)
        return edited

    x = _edit_batches(run, images, num, y, seed, batch_size, precision, jumps)
    return Edited(x, _shown_labels(run, y), _rows(images, x, num), used[0])


def interpolate(
    run: Run,
    *,
    seeds: Sequence[int] | None = None,
    images: Tensor | None = None,
    frames: int = 8,
    steps: int | None = None,
    spacing: Spacing | None = None,
    labels: Labels = None,
    guidance: float | None = None,
    precision: Precision | None = None,
) -> Edited:
    """``frames`` DDIM decodings of slerp between two x_T: the noises of two seeds, or two images' DDIM inversions;
    a consistency model decodes the noises of two seeds with its own sampler (``steps`` calls)."""
    _image_run(run, "interpolation")
    if (seeds is None) == (images is None):
        raise UserError("interpolate between two seeds or two images (one of the two)")
    int_in_range("frames", frames, 2)
    if is_consistency(run.config):
        if images is not None:
            raise UserError(
                "a consistency model cannot invert images to their noises (no DDIM chain): interpolate between "
                "--seeds, or between images with its teacher run"
            )
        asked = SamplingRequest(steps=steps, spacing=spacing, guidance=guidance)
        calls = check_consistency_options(run.config.sample, asked)
    else:
        steps = _steps(run, "ddim", steps)
    if seeds is not None:
        seeds = list(seeds)
        if len(seeds) != 2:
            raise UserError(f"seeds must be two integers, got {seeds!r}")
        for s in seeds:
            check_seed(s)
    elif images is not None and len(images) != 2:
        raise UserError(f"interpolation needs two images, got {len(images)}")
    if labels is not None and len(str(labels).split(",")) != 1:
        raise UserError(f"interpolation takes one label, got {labels!r}")
    y, w = _conditioning(run, labels, 2, guidance)
    if is_consistency(run.config):
        return _interpolate_consistency(run, seeds or [], frames, calls, y, precision)
    opts = SamplingOptions("ddim", steps, spacing, guidance=w)
    device = run.device
    ends_y = None if y is None else y.to(device)
    with autocast_context(device, autocast_dtype(precision or "auto", device)):
        if seeds is not None:
            ends = _seed_noises(run, seeds)
        else:
            assert images is not None  # seeds or images, checked above
            ends = run.diffusion.invert(run.model, images.to(device), y=ends_y, options=opts)
        z = slerp_frames(ends[:1], ends[1:], frames)
        yf = None if y is None else y[:1].expand(frames).to(device)
        x = run.diffusion.sample(run.model, tuple(z.shape), y=yf, x_T=z, options=opts).float().cpu()
    row = x if images is None else torch.cat([images[:1], x, images[1:]])
    return Edited(
        x,
        _shown_labels(run, None if y is None else y[:1].expand(frames)),
        [row],
        opts.calls(run.diffusion.num_timesteps),
    )


def _seed_noises(run: Run, seeds: Sequence[int]) -> Tensor:
    """The x_T that ``Run.sample`` draws first for each seed, stacked: the ends an interpolation slerps between."""
    gens = (torch.Generator(device=run.device).manual_seed(s) for s in seeds)
    return torch.cat([randn((1, *run.sample_shape), g, run.device) for g in gens])


def _interpolate_consistency(
    run: Run, seeds: Sequence[int], frames: int, calls: int, y: Tensor | None, precision
) -> Edited:
    """Frames of slerp between two seeds' noises, each decoded in ``calls`` jumps re-noised alike (the first seed's
    generator for every frame), so the strip changes only with the noise it interpolates."""
    device = run.device
    ends = _seed_noises(run, seeds)
    z = slerp_frames(ends[:1], ends[1:], frames)
    yf = None if y is None else y[:1].expand(frames).to(device)
    gens = [torch.Generator(device=device).manual_seed(seeds[0]) for _ in range(frames)]
    with torch.no_grad(), autocast_context(device, autocast_dtype(precision or "auto", device)):
        x = (
            sample_consistency(
                run.config, run.model, run.diffusion, tuple(z.shape), calls, y=yf, generator=gens, device=device, x_T=z
            )
            .float()
            .cpu()
        )
    return Edited(x, _shown_labels(run, None if y is None else y[:1].expand(frames)), [x], calls)


# --------------------------------------------------------------------------- outputs
def write_edited(path: str | Path, edited: Edited, levels: int | None = None) -> Path:
    """The results as a ``.npz`` (images uint8 NHWC, labels) or a ``.png`` picture, one row per input."""
    path = Path(path)
    labels = None if edited.labels is None else edited.labels.numpy().astype(np.int64)
    if path.suffix.lower() == ".npz":
        return save_npz(path, to_uint8(edited.x, levels), labels)
    scale = tile_scale(edited.x.shape[-1])
    save_png(path, make_trajectory_grid([to_uint8(r, levels) for r in edited.rows], scale=scale))
    return path


# --------------------------------------------------------------------------- interpolation's two images
def image_pair(text: str) -> list[str]:
    """The two files of ``interpolate --images I1,I2``, refused before a run is loaded when they are not two."""
    paths = text.split(",")
    if len(paths) != 2:
        raise UserError(f"--images must be two files I1,I2, got {text!r}")
    return paths


def read_image_pair(paths: Sequence[str], run: Run) -> Tensor:
    """The first image of each of the two files, [2, C, H, W] in [-1, 1], the ends ``interpolate`` inverts."""
    return torch.cat([read_images(p, run)[:1] for p in paths])
