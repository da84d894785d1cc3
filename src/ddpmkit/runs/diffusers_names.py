"""UNet2DModel's module names for ddpmkit's UNet: the one table export and import share."""

from __future__ import annotations

__all__ = ["diffusers_names"]


def diffusers_names(m) -> dict[str, str]:
    """Our UNet's module paths -> UNet2DModel's, module by module: the one table export and import share.

    An attention's ``qkv`` is UNet2DModel's ``to_q``, ``to_k`` and ``to_v`` stacked (q rows, k rows, v rows).
    """
    names = {
        "init_conv": "conv_in",
        "time_embedding.1": "time_embedding.linear_1",
        "time_embedding.3": "time_embedding.linear_2",
        "out_norm": "conv_norm_out",
        "out_conv": "conv_out",
    }
    names.update(_block_names(m))
    return names


_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_bias": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "skip": "conv_shortcut",
}


def _block_names(m) -> dict[str, str]:
    """Our module paths -> UNet2DModel's, for every residual block, attention and resampler."""
    names: dict[str, str] = {}
    levels, attends = len(m.channel_mults), [r in m.attention_resolutions for r in m.level_resolutions()]

    def resnet(ours: str, theirs: str, attention: str | None) -> None:
        names.update({f"{ours}.{a}": f"{theirs}.{b}" for a, b in _RESNET.items()})
        if attention:
            names[f"{ours}.attention"] = attention
            names[f"{ours}.attention.norm"] = f"{attention}.group_norm"
            names[f"{ours}.attention.proj"] = f"{attention}.to_out.0"

    k = 0
    for i in range(levels):
        for j in range(m.num_res_blocks):
            resnet(
                f"downs.{k}", f"down_blocks.{i}.resnets.{j}", f"down_blocks.{i}.attentions.{j}" if attends[i] else None
            )
            k += 1
        if i != levels - 1:
            names[f"downs.{k}.conv"] = f"down_blocks.{i}.downsamplers.0.conv"
            k += 1
    resnet("middle.0", "mid_block.resnets.0", "mid_block.attentions.0")
    resnet("middle.1", "mid_block.resnets.1", None)
    k = 0
    for u, i in enumerate(reversed(range(levels))):
        for j in range(m.num_res_blocks + 1):
            resnet(f"ups.{k}", f"up_blocks.{u}.resnets.{j}", f"up_blocks.{u}.attentions.{j}" if attends[i] else None)
            k += 1
        if i != 0:
            names[f"ups.{k}.conv"] = f"up_blocks.{u}.upsamplers.0.conv"
            k += 1
    return names
