"""Shared UNet building blocks: timestep embedding, residual blocks, down/up sampling."""

from __future__ import annotations

import math

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn


class TimestepEmbedding(nn.Module):
    """Sinusoidal features (MONAI's ``get_timestep_embedding``, DDPM's) followed by a two-layer MLP, shared by the
    decoder, SS-Former and NBP-Filters."""

    def __init__(self, base_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.base_dim = base_dim
        self.mlp = nn.Sequential(nn.Linear(base_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.mlp(get_timestep_embedding(timesteps, self.base_dim))


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= 32 that divides ``channels``."""
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """Pre-activation residual block; with ``emb_dim`` the timestep embedding scales and shifts the features."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels)) if emb_dim else None
        self.out_norm = norm(out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.out_norm(self.in_layers(x))
        if self.emb_proj is not None:
            scale, shift = self.emb_proj(emb)[..., None, None].chunk(2, dim=1)
            h = torch.addcmul(shift, h, 1 + scale)  # h * (1 + scale) + shift in one pass
        return self.skip(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving the spatial size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
