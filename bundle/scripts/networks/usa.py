"""Anchor Condition: spatial attention (SA, Woo et al. 2018) and the paper's uncertain spatial attention U-SA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialAttention(nn.Module):
    """Eq. 5 with f_anc = f_c^{-1}: f_d' = Sigmoid(f_anc * k_1x1) . f_d + f_d (the ablation's plain "SA").

    Two options depart from the paper (off by default; docs/architecture.md): ``gates > 1`` gives each of ``gates``
    equal channel groups of f_d its own sigmoid gate (one per class) instead of one shared map, and
    ``feature_channels`` adds a zero-initialised 1x1 projection of f_anc to f_d', so the anchor features also reach
    the denoiser additively, not only as a multiplicative gate.
    """

    def __init__(self, anchor_channels: int, gates: int = 1, feature_channels: int | None = None) -> None:
        super().__init__()
        self.gates = gates
        self.proj = nn.Conv2d(anchor_channels, gates, kernel_size=1)
        self.residual = nn.Conv2d(anchor_channels, feature_channels, kernel_size=1) if feature_channels else None
        if self.residual is not None:
            nn.init.zeros_(self.residual.weight)
            nn.init.zeros_(self.residual.bias)

    def anchor(self, f_c: torch.Tensor) -> torch.Tensor:
        return f_c

    def forward(self, f_d: torch.Tensor, f_c: torch.Tensor) -> torch.Tensor:
        f_anc = self.anchor(f_c)
        gate = torch.sigmoid(self.proj(f_anc))
        if self.gates > 1:
            gate = gate.repeat_interleave(f_d.shape[1] // self.gates, dim=1)
        out = gate * f_d + f_d
        return out if self.residual is None else out + self.residual(f_anc)


class USA(SpatialAttention):
    """Eq. 4-5: f_anc = Max(f_c^{-1} * k_Gauss, f_c^{-1}) with a learnable Gaussian kernel, then spatial attention."""

    def __init__(
        self,
        anchor_channels: int,
        kernel_size: int = 5,
        init_sigma: float = 1.0,
        gates: int = 1,
        feature_channels: int | None = None,
    ) -> None:
        super().__init__(anchor_channels, gates, feature_channels)
        if kernel_size % 2 != 1:
            raise ValueError(f"U-SA Gaussian kernel_size must be odd, got {kernel_size}.")
        self.kernel_size = kernel_size
        # one learnable width per channel, kept positive through softplus
        self.sigma_raw = nn.Parameter(
            torch.full((anchor_channels,), float(torch.log(torch.expm1(torch.tensor(init_sigma)))))
        )

    def gaussian_kernel(self) -> torch.Tensor:
        """Depthwise (C, 1, k, k) normalised Gaussian kernels k_Gauss."""
        r = self.kernel_size // 2
        x = torch.arange(-r, r + 1, dtype=self.sigma_raw.dtype, device=self.sigma_raw.device)
        sq = (x[:, None] ** 2 + x[None, :] ** 2)[None]  # (1, k, k)
        sigma = F.softplus(self.sigma_raw)[:, None, None] + 1e-3
        k = torch.exp(-sq / (2 * sigma**2))
        return (k / k.sum(dim=(1, 2), keepdim=True))[:, None]

    def anchor(self, f_c: torch.Tensor) -> torch.Tensor:
        smoothed = F.conv2d(
            f_c, self.gaussian_kernel().to(f_c.dtype), padding=self.kernel_size // 2, groups=f_c.shape[1]
        )
        return torch.maximum(smoothed, f_c)
