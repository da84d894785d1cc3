"""Export a run's weights: a safetensors file with its config, or a diffusers folder (UNet2DModel + DDPMScheduler).

    ddpmkit export runs/digits --format safetensors   # runs/digits_export/model.safetensors + config.json
    ddpmkit export runs/digits --format diffusers     # runs/digits_diffusers/ for DDPMPipeline.from_pretrained

A diffusers folder is written only for a network that diffusers' UNet2DModel computes exactly;
any other is refused with the reason (``diffusers_refusal``). Writing needs ``safetensors``
(the ``export`` extra), not diffusers.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from ..config import config_from_checkpoint
from ..errors import UserError
from ..files import write_bytes, write_text
from ..options import ExportFormat, check_choice, choices
from ..version import __version__
from .build import build_betas, build_model
from .diffusers_names import diffusers_names
from .outputs import check_output, claimed_folder
from .run import Run
from .rundir import resolve_checkpoint

__all__ = [
    "export_run",
    "diffusers_refusal",
    "diffusers_unet_config",
    "diffusers_state_dict",
    "diffusers_names",
    "scheduler_config",
    "load_safetensors",
    "FORMATS",
]

FORMATS = choices(ExportFormat)
_DIFFUSERS_VERSION = "0.42.1"  # the diffusers whose source this mapping was checked against (recorded in the configs)


def export_run(run_path: str | Path, fmt: ExportFormat, out: str | Path | None = None, force: bool = False) -> Path:
    """Write the run's EMA weights (its raw weights if it kept no EMA) in ``fmt``; return the folder."""
    check_choice("export format", fmt, ExportFormat)
    safetensors = _safetensors()
    out = check_output(
        Path(out) if out else _default_out(resolve_checkpoint(run_path), Path(run_path), fmt), force, folder=True
    )
    with claimed_folder(out, force):
        run = Run.load(run_path, device="cpu")
        if fmt == "diffusers":
            reason = diffusers_refusal(run.config)
            if reason:
                raise UserError(f"cannot export to diffusers: {reason}")
        state = {k: v.detach().contiguous() for k, v in run.model.state_dict().items()}
        if fmt == "safetensors":
            write_bytes(out / "model.safetensors", safetensors.save(state, metadata={"format": "pt"}))
            write_text(out / "config.json", json.dumps(_about(run), indent=2) + "\n")
        else:
            _write_diffusers(out, run, state, safetensors)
    return out


def _write_diffusers(out: Path, run: Run, state: dict[str, Tensor], safetensors) -> None:
    """The diffusers folder of ``run``'s weights ``state``: the pipeline index last, so a complete folder has it."""
    about = _about(run)
    unet = {"_class_name": "UNet2DModel", "_diffusers_version": _DIFFUSERS_VERSION, **diffusers_unet_config(run.config)}
    scheduler = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": _DIFFUSERS_VERSION,
        **scheduler_config(run.config.diffusion),
    }
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": _DIFFUSERS_VERSION,
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    weights = safetensors.save(diffusers_state_dict(state, run.config.model), metadata={"format": "pt"})
    write_bytes(out / "unet" / "diffusion_pytorch_model.safetensors", weights)
    write_text(out / "unet" / "config.json", json.dumps(unet, indent=2) + "\n")
    write_text(out / "scheduler" / "scheduler_config.json", json.dumps(scheduler, indent=2) + "\n")
    write_text(out / "ddpmkit.json", json.dumps(about, indent=2) + "\n")
    write_text(out / "model_index.json", json.dumps(index, indent=2) + "\n")  # last: a complete folder has it


def _safetensors():
    try:
        import safetensors.torch  # optional: safetensors (the export extra)
    except ImportError:
        raise UserError("export needs the safetensors package: pip install 'ddpmkit[export]'") from None
    return safetensors.torch


def _default_out(checkpoint: Path, given: Path, fmt: str) -> Path:
    """RUN_export (safetensors) or RUN_diffusers beside a run directory; beside the file for a checkpoint."""
    base = given if given.is_dir() else checkpoint.with_suffix("")
    return base.parent / f"{base.name}_{'export' if fmt == 'safetensors' else 'diffusers'}"


def _about(run) -> dict:
    """What the weights are: ddpmkit's full config, the step, EMA or not, the class names."""
    return {
        "ddpmkit_version": __version__,
        "config": run.config.to_dict(),
        "step": run.step,
        "ema": run.ema,
        "class_names": run.class_names,
        "checkpoint": str(run.checkpoint),
    }


def load_safetensors(folder: str | Path):
    """(network, experiment config) from a ``--format safetensors`` folder; the network in eval mode."""
    folder = Path(folder)
    about = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = config_from_checkpoint(about["config"])
    model = build_model(cfg.model)
    model.load_state_dict(_safetensors().load_file(str(folder / "model.safetensors")))
    return model.eval(), cfg


# ----------------------------------------------------------------------------- diffusers


def diffusers_refusal(cfg) -> str | None:
    """Why diffusers' UNet2DModel cannot compute this run's network exactly, or None when it can."""
    m = cfg.model
    if m.kind != "unet":
        return "this run's network is an MLP over 2-D points; diffusers' UNet2DModel models images"
    if m.num_classes is not None:
        return (
            "the class label enters every residual block as that block's own learned class bias; "
            "UNet2DModel adds one class embedding to the time embedding before the blocks' "
            "SiLU, which cannot express it (an unconditional run, data.conditional: false, exports)"
        )
    if m.initial_pad:
        return f"model.initial_pad is {m.initial_pad}: UNet2DModel has no pad-and-crop around the network"
    if m.channel_mults[0] != 1:
        return (
            f"model.channel_mults starts with {m.channel_mults[0]}: UNet2DModel's first level has the width "
            "of its input convolution and time table (channel_mults[0] must be 1)"
        )
    if m.time_emb_scale != 1.0:
        return f"model.time_emb_scale is {m.time_emb_scale}: UNet2DModel's sinusoidal table has no scale"
    if len(_head_dims(m)) != 1:
        return (
            "the attention layers have heads of different widths "
            + str(sorted(_head_dims(m)))
            + "; UNet2DModel has one attention_head_dim"
        )
    return None


def _head_dims(m) -> set[int]:
    """The head width of every attention layer (the middle's included)."""
    levels = zip(m.level_channels(), m.level_resolutions())
    channels = [c for c, r in levels if r in m.attention_resolutions] + [m.level_channels()[-1]]
    return {c // max(1, c // m.head_channels) for c in channels}


def _attends(m) -> list[bool]:
    return [r in m.attention_resolutions for r in m.level_resolutions()]


def diffusers_unet_config(cfg) -> dict:
    """UNet2DModel's constructor arguments for a network ``diffusers_refusal`` accepts."""
    m = cfg.model
    attends = _attends(m)
    return {
        "sample_size": m.resolved_image_size,
        "in_channels": m.resolved_in_channels,
        "out_channels": m.resolved_out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": m.resolved_time_emb_dim,
        "freq_shift": m.time_freq_shift,
        "flip_sin_to_cos": False,  # cat(sin, cos), frequencies 10000^(-k/half)
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "block_out_channels": m.level_channels(),
        "layers_per_block": m.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": m.downsample_padding,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": m.dropout,
        "act_fn": "silu",
        "attention_head_dim": next(iter(_head_dims(m))),
        "norm_num_groups": m.num_groups,
        "attn_norm_num_groups": None,
        "norm_eps": m.norm_eps,
        "resnet_time_scale_shift": "default",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": None,
    }


def scheduler_config(d) -> dict:
    """DDPMScheduler's arguments for a diffusion config; the betas are given exactly (``trained_betas``)."""
    return {
        "num_train_timesteps": d.timesteps,
        "beta_schedule": {"cosine": "squaredcos_cap_v2"}.get(d.schedule, d.schedule),  # informative: trained_betas rule
        "beta_start": d.beta_start,
        "beta_end": d.beta_end,
        "trained_betas": build_betas(d).tolist(),
        "variance_type": d.variance,  # fixed_large, fixed_small and learned_range mean the same there
        "clip_sample": d.clip_denoised,
        "clip_sample_range": 1.0,
        "prediction_type": {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[d.prediction],
        "thresholding": False,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }


def diffusers_state_dict(state: dict[str, Tensor], m) -> dict[str, Tensor]:
    """Our UNet's state dict under UNet2DModel's names (attention's qkv split into to_q, to_k, to_v)."""
    names = diffusers_names(m)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module.endswith(".attention.qkv"):  # rows: q of every head, then k, then v
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[f"{names[module[:-4]]}.{name}.{param}"] = part.contiguous()
        elif module in names:
            out[f"{names[module]}.{param}"] = value
        else:
            raise ValueError(f"no diffusers name for {key!r}")  # a bug: diffusers_refusal let it through
    return out
