"""MedSegDiff-V2: Condition Model + Diffusion Model joined by the Anchor Condition and the Semantic Condition."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from .blocks import TimestepEmbedding, norm
from .ss_former import SSFormer
from .unet import ConditionModel, ConditionOutput, UNetTrunk
from .usa import USA, SpatialAttention

ANCHOR_MODES = ("none", "sa", "usa")
SEMANTIC_MODES = ("none", "ssformer", "ssformer_nbp")
GATE_MODES = ("single", "per_class")


@dataclass(frozen=True)
class Architecture:
    """The sizes of a MedSegDiffV2: a preset, or explicit values (any of them override the preset's)."""

    channels: tuple[int, ...]  # denoiser UNet channels per level
    cond_channels: tuple[int, ...]  # Condition Model channels per level (same number of levels)
    num_res_blocks: int
    former_dim: int  # SS-Former width, depth and heads
    former_depth: int
    former_heads: int
    patch_size: int
    filter_width: int  # NBP-Filter width and blocks
    filter_blocks: int


PRESETS: dict[str, Architecture] = {
    # 256x256 as in the paper: 46,880,035 parameters with 3 image channels and 1 class (Table 5 reports 46 M)
    "paper": Architecture((64, 128, 192, 256, 256), (32, 64, 128, 256, 256), 2, 256, 4, 8, 1, 16, 6),
    # trains on a 2-core CPU at 64-128 px
    "small": Architecture((16, 32, 64, 128), (16, 32, 64, 128), 1, 64, 4, 4, 1, 8, 6),
}


def architecture(preset: str | None, **sizes: Any) -> Architecture:
    """The preset's sizes with ``sizes`` (the :class:`Architecture` fields; ``None`` values ignored) overriding them."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)} or None.")
    names = [f.name for f in fields(Architecture)]
    unknown = sorted(set(sizes) - set(names))
    if unknown:
        raise TypeError(f"MedSegDiffV2 got unknown arguments {unknown}; the sizes are {names}.")
    given = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in sizes.items() if v is not None}
    if preset is not None:
        return replace(PRESETS[preset], **given)
    missing = [k for k in names if k not in given]
    if missing:
        raise ValueError(f"Without a preset these arguments are required: {missing}.")
    return Architecture(**given)


class MedSegDiffV2(nn.Module):
    """D(TransF(E^I, E^x), t) (eq. 2) with U-SA anchor condition (eq. 4-5) and SS-Former.

    The output has one channel per mask channel. The paper reads it as the noise eps_theta(x_t, I, t); the bundle's
    configs train and sample it as the clean mask x0 (-1 background, 1 foreground; ``prediction_type: sample``). The
    loss and the scheduler decide which (eps, x0 or v); the network is the same.

    Args:
        in_channels: image channels (1 for CT/MR, 3 for RGB).
        out_channels: mask channels, one per foreground class (one-hot; 1 for a binary task).
        preset: ``"paper"`` or ``"small"`` (:data:`PRESETS`), or ``None`` with every size given.
        sizes: :class:`Architecture` fields (``channels``, ``former_dim``, ...) that override the preset's.
        anchor: Anchor Condition, ``"none"`` | ``"sa"`` | ``"usa"`` (Table 4).
        semantic: Semantic Condition, ``"none"`` | ``"ssformer"`` (without filter) | ``"ssformer_nbp"`` (Table 4).
        gradient_checkpointing: recompute the UNets' residual blocks in backward (less training memory, ~30% slower).
        filter_checkpointing: recompute the NBP-Filters in backward (less training memory when a batch holds many
            distinct timesteps; slower).
        anchor_gates: ``"single"`` (eq. 5: one gate map) or ``"per_class"`` (one gate per class, each over its own
            channel group of f_d). Not in the paper.
        anchor_residual: also add a zero-initialised 1x1 projection of f_anc to f_d'. Not in the paper.
        concat_anchor: feed the Condition Model's anchor probabilities to the denoiser next to x_t. Not in the paper.
        self_condition: feed the previous x0 estimate to the denoiser next to x_t (self-conditioning, Chen et al.,
            "Analog Bits", 2022; zeros when there is none). Not in the paper.
        concat_image: feed the raw image to the denoiser next to x_t, as the authors' released code does. Not in the
            paper.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        preset: str | None = "paper",
        anchor: str = "usa",
        semantic: str = "ssformer_nbp",
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
        filter_checkpointing: bool = False,
        anchor_gates: str = "single",
        anchor_residual: bool = False,
        concat_anchor: bool = False,
        self_condition: bool = False,
        concat_image: bool = False,
        **sizes: Any,
    ) -> None:
        super().__init__()
        if anchor not in ANCHOR_MODES:
            raise ValueError(f"Unknown anchor condition {anchor!r}; choose one of {ANCHOR_MODES}.")
        if anchor_gates not in GATE_MODES:
            raise ValueError(f"Unknown anchor_gates {anchor_gates!r}; choose one of {GATE_MODES}.")
        if semantic not in SEMANTIC_MODES:
            raise ValueError(f"Unknown semantic condition {semantic!r}; choose one of {SEMANTIC_MODES}.")
        cfg = architecture(preset, **sizes)
        if len(cfg.channels) != len(cfg.cond_channels):
            raise ValueError("channels and cond_channels need the same number of levels (same total stride).")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.anchor_mode, self.semantic_mode = anchor, semantic
        ch = tuple(cfg.channels)
        emb_dim = 4 * ch[0]

        self.condition_model = ConditionModel(
            in_channels, out_channels, cfg.cond_channels, cfg.num_res_blocks, dropout, gradient_checkpointing
        )
        self.time_embed = TimestepEmbedding(ch[0], emb_dim)
        self.concat_anchor, self.self_condition, self.concat_image = concat_anchor, self_condition, concat_image
        stem_in = out_channels * (1 + concat_anchor + self_condition) + in_channels * concat_image
        self.stem = nn.Conv2d(stem_in, ch[0], 3, padding=1)
        anchor_ch = cfg.cond_channels[0]
        anchor_cls = {"none": None, "sa": SpatialAttention, "usa": USA}[anchor]
        gates = out_channels if anchor_gates == "per_class" else 1
        if ch[0] % gates:
            raise ValueError(f"anchor_gates='per_class' needs channels[0]={ch[0]} divisible by {gates} classes.")
        self.anchor_condition = (
            anchor_cls(anchor_ch, gates=gates, feature_channels=ch[0] if anchor_residual else None)
            if anchor_cls
            else None
        )
        self.trunk = UNetTrunk(ch, cfg.num_res_blocks, emb_dim, dropout, gradient_checkpointing)
        self.semantic_condition = (
            SSFormer(
                cond_channels=cfg.cond_channels[-1],
                noise_channels=ch[-1],
                emb_dim=emb_dim,
                dim=cfg.former_dim,
                depth=cfg.former_depth,
                heads=cfg.former_heads,
                patch_size=cfg.patch_size,
                use_filter=semantic == "ssformer_nbp",
                filter_width=cfg.filter_width,
                filter_blocks=cfg.filter_blocks,
                filter_checkpointing=filter_checkpointing,
            )
            if semantic != "none"
            else None
        )
        self.out = nn.Sequential(norm(ch[0]), nn.SiLU(), nn.Conv2d(ch[0], out_channels, 3, padding=1))
        self.size_divisor = self.trunk.stride * (cfg.patch_size if semantic != "none" else 1)

    # -- input checks -------------------------------------------------------------------------------------------
    def _check(self, t: torch.Tensor, channels: int, what: str) -> None:
        if t.ndim != 4:
            raise ValueError(
                f"MedSegDiffV2 is a 2D network: {what} must be (B, C, H, W), got shape {tuple(t.shape)}"
                + (" (a 3D volume? slice it first, e.g. with SliceInferer)." if t.ndim == 5 else ".")
            )
        if t.shape[1] != channels:
            raise ValueError(f"{what} has {t.shape[1]} channels, the network expects {channels}.")
        h, w = t.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(
                f"{what} size {h}x{w} is not divisible by the network's total stride {self.size_divisor}; "
                "resize or pad to a multiple of it."
            )

    def _timesteps(self, timesteps: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) timesteps, or (1,) when the whole batch shares one (sampling): its embedding then broadcasts over
        the batch and the NBP-Filters are computed once."""
        t = torch.as_tensor(timesteps, device=device, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            return t
        if t.numel() != batch:
            raise ValueError(f"timesteps has {t.numel()} values for a batch of {batch}.")
        return t

    # -- the two models ------------------------------------------------------------------------------------------
    def condition(self, image: torch.Tensor) -> ConditionOutput:
        """Runs the Condition Model once; reuse the result for every sampling step and ensemble member (a
        ``concat_image`` network's condition also carries the image)."""
        self._check(image, self.in_channels, "image")
        out = self.condition_model(image)
        return out._replace(image=image) if self.concat_image else out

    def forward(
        self,
        x: torch.Tensor,
        timesteps: int | float | torch.Tensor,
        image: torch.Tensor | None = None,
        condition: ConditionOutput | None = None,
        with_anchor: bool = False,
        x_self_cond: torch.Tensor | None = None,
        anchor_offset: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's prediction for ``x`` (the noisy mask x_t, (B, K, H, W)), given the image or its cached
        ``condition``: (B, K, H, W), x0 with the configs' ``prediction_type: sample`` (eps or v if trained so).

        ``with_anchor=True`` also returns the Condition Model's anchor logits (for the anchor loss of eq. 3), so that
        training runs through one ``forward`` call, as DistributedDataParallel requires. ``x_self_cond``: the previous
        x0 estimate (B, K, H, W) for a ``self_condition`` network (``None``: zeros); ignored otherwise.
        ``anchor_offset``: added to the anchor logits that a ``concat_anchor`` network concatenates to x_t (training's
        anchor corruption); U-SA, SS-Former and the returned anchor logits are unchanged; ignored otherwise.
        """
        self._check(x, self.out_channels, "x (noisy mask)")
        if condition is None:
            if image is None:
                raise ValueError("Pass either image or a cached condition (from MedSegDiffV2.condition).")
            condition = self.condition(image)
        got, want = tuple(condition.feature.shape), (x.shape[0], condition.feature.shape[1], *x.shape[-2:])
        if got != want:
            raise ValueError(
                f"condition features have shape {got} but x needs {want}; "
                "use condition.repeat_interleave(n) to run n ensemble members per image."
            )
        emb = self.time_embed(self._timesteps(timesteps, x.shape[0], x.device))
        parts = [x]
        if self.concat_anchor:
            logits = condition.anchor_logits if anchor_offset is None else condition.anchor_logits + anchor_offset
            parts.append(torch.sigmoid(logits).to(x.dtype))
        if self.self_condition:
            parts.append(torch.zeros_like(x) if x_self_cond is None else x_self_cond.to(x.dtype))
        if self.concat_image:
            if condition.image is None:
                raise ValueError("a concat_image network needs the image in its condition (MedSegDiffV2.condition).")
            parts.append(condition.image.to(x.dtype))
        f_d = self.stem(torch.cat(parts, 1) if len(parts) > 1 else x)  # f_d^0
        if self.anchor_condition is not None:
            f_d = self.anchor_condition(f_d, condition.feature)  # f_d'^0 (eq. 5)
        e, skips = self.trunk.encode(f_d, emb)
        if self.semantic_condition is not None:
            e = self.semantic_condition(condition.embedding, e, emb)  # TransF(E^I, E^x)
        out = self.out(self.trunk.decode(e, skips, emb))  # D(., t)
        return (out, condition.anchor_logits) if with_anchor else out
