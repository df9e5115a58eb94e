"""The two UNets of MedSegDiff-V2: the Condition Model over the raw image and the trunk of the Diffusion Model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import Downsample, ResBlock, Upsample, norm


class UNetTrunk(nn.Module):
    """Encoder/decoder with one skip per level; ``emb_dim`` makes every residual block timestep-conditioned."""

    def __init__(
        self,
        channels: Sequence[int],
        num_res_blocks: int = 2,
        emb_dim: int | None = None,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.gradient_checkpointing = gradient_checkpointing
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            blocks = [ResBlock(prev if j == 0 else ch, ch, emb_dim, dropout) for j in range(num_res_blocks)]
            self.down.append(nn.ModuleList(blocks))
            self.downsample.append(Downsample(ch) if i < len(channels) - 1 else nn.Identity())
            prev = ch
        self.mid = nn.ModuleList([ResBlock(prev, prev, emb_dim, dropout) for _ in range(2)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(channels))):
            ch = channels[i]
            blocks = [ResBlock(prev + ch if j == 0 else ch, ch, emb_dim, dropout) for j in range(num_res_blocks)]
            self.up.append(nn.ModuleList(blocks))
            self.upsample.append(Upsample(ch) if i > 0 else nn.Identity())
            prev = ch

    @property
    def stride(self) -> int:
        return 1 << (len(self.channels) - 1)  # an int in TorchScript too (2 ** n is a float there)

    def _block(self, blk: ResBlock, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, h, emb, use_reentrant=False)  # trade compute for activation memory
        return blk(h, emb)

    def encode(self, h: torch.Tensor, emb: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the deepest embedding and the per-level skip features."""
        skips = []
        for blocks, down in zip(self.down, self.downsample, strict=False):
            for blk in blocks:
                h = self._block(blk, h, emb)
            skips.append(h)
            h = down(h)
        for blk in self.mid:
            h = self._block(blk, h, emb)
        return h, skips

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor | None = None) -> torch.Tensor:
        """Returns the last decoded feature map (``channels[0]`` channels, full resolution)."""
        for blocks, up, skip in zip(self.up, self.upsample, reversed(skips), strict=False):
            h = torch.cat([h, skip], dim=1)
            for blk in blocks:
                h = self._block(blk, h, emb)
            h = up(h)
        return h


class ConditionOutput(NamedTuple):
    """What the Condition Model gives the Diffusion Model; independent of x_t and t, so it can be cached."""

    anchor_logits: torch.Tensor  # (B, K, H, W) anchor segmentation, supervised by L_dice + beta L_ce (eq. 3)
    feature: torch.Tensor  # f_c^{-1}: last decoded feature (B, C0, H, W), input of the Anchor Condition (eq. 4)
    embedding: torch.Tensor  # c^0: deepest embedding (B, C_last, H/s, W/s), input of the SS-Former
    image: torch.Tensor | None = None  # the raw image, kept only for a ``concat_image`` denoiser

    def repeat_interleave(self, repeats: int) -> ConditionOutput:
        """Each image's condition repeated ``repeats`` times along the batch (for an ensemble run as one batch)."""
        return ConditionOutput(*(None if t is None else t.repeat_interleave(repeats, dim=0) for t in self))


class ConditionModel(nn.Module):
    """Standard UNet over the raw image yielding anchor logits, f_c^{-1} and c^0 (Fig. 1a, Condition Model)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        num_res_blocks: int = 2,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.trunk = UNetTrunk(channels, num_res_blocks, None, dropout, gradient_checkpointing)
        self.head = nn.Sequential(norm(channels[0]), nn.SiLU(), nn.Conv2d(channels[0], out_channels, 1))

    def forward(self, image: torch.Tensor) -> ConditionOutput:
        c0, skips = self.trunk.encode(self.stem(image))
        feature = self.trunk.decode(c0, skips)
        return ConditionOutput(self.head(feature), feature, c0)
