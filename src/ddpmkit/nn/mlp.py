"""A small residual-MLP denoiser for 2-D toy data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..fields import check_fields, from_dict, require, to_dict
from ..options import ModelKind
from .embeddings import TimeEmbedding, check_conditioning

__all__ = ["MLPConfig", "MLPDenoiser"]


@dataclass
class MLPConfig:
    """Shape of an MLPDenoiser; saved in checkpoints."""

    kind: ClassVar[ModelKind] = "mlp"
    section: ClassVar[str] = "model"

    dim: int = 2  # data dimension
    hidden: int = 256  # width of the residual blocks
    depth: int = 4  # number of residual blocks
    time_emb_dim: int = 128  # size of the sinusoidal timestep table (must be even)
    time_emb_scale: float = 1.0  # factor applied to t before the sinusoidal table
    num_classes: int | None = None  # class-conditional with this many classes (+1 null label); None: off
    out_dim: int | None = None  # output size (None: dim; 2*dim for learned variance)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("dim", "hidden", "depth", "time_emb_dim", "out_dim", "num_classes"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"model.{name}", "a positive integer", value)
        require(self.time_emb_dim % 2 == 0, "model.time_emb_dim", "even", self.time_emb_dim)
        require(self.time_emb_scale > 0, "model.time_emb_scale", "positive", self.time_emb_scale)

    @property
    def resolved_out_dim(self) -> int:
        """Output size with the default filled in."""
        return self.dim if self.out_dim is None else self.out_dim

    def to_dict(self) -> dict:
        """Plain dict of the fields."""
        return to_dict(self, with_kind=False)

    @classmethod
    def from_dict(cls, d: Mapping) -> MLPConfig:
        """Build from a dict; unknown keys and wrong types raise UserError."""
        return from_dict(cls, d)


class _Block(nn.Module):
    """h + Linear(SiLU(Linear(SiLU(LayerNorm(h))) + Linear(cond)))."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.cond = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """h [B, hidden], cond = SiLU(time + class embedding) [B, hidden] -> [B, hidden]."""
        z = self.fc1(F.silu(self.norm(h))) + self.cond(cond)
        return h + self.fc2(F.silu(z))


class MLPDenoiser(nn.Module):
    """Residual MLP: model(x [B, dim], t [B], y=None) -> [B, out_dim]."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        if not isinstance(config, MLPConfig):
            raise TypeError(f"MLPDenoiser needs an MLPConfig, got {type(config).__name__}")
        self.config = config
        cfg = config
        # label num_classes is the null ("no class") label of classifier-free guidance
        self.null_class: int | None = cfg.num_classes
        self.time_embedding = TimeEmbedding(cfg.time_emb_dim, cfg.hidden, cfg.time_emb_scale)
        self.class_embedding = nn.Embedding(cfg.num_classes + 1, cfg.hidden) if cfg.num_classes is not None else None
        self.in_proj = nn.Linear(cfg.dim, cfg.hidden)
        self.blocks = nn.ModuleList([_Block(cfg.hidden) for _ in range(cfg.depth)])
        self.out_norm = nn.LayerNorm(cfg.hidden)
        self.out_proj = nn.Linear(cfg.hidden, cfg.resolved_out_dim)
        nn.init.zeros_(self.out_proj.weight)  # the net starts by predicting 0
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, dim], t timesteps [B] (int64 or float), y labels [B] (conditional models only)."""
        t = check_conditioning(x, t, y, self.null_class)
        cond = self.time_embedding(t)
        if self.class_embedding is not None:
            cond = cond + self.class_embedding(y).to(cond.dtype)
        cond = F.silu(cond)
        h = self.in_proj(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out_proj(F.silu(self.out_norm(h)))
