"""Diffusion training pieces for segmentation: the LABEL is diffused, the image is the condition (eq. 1-3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.inferers import Inferer
from monai.losses import DiceLoss
from monai.networks.schedulers import Scheduler
from torch import nn


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the module itself)."""
    return getattr(network, "module", network)


class SegDiffusionPrepareBatch(PrepareBatch):
    """Draws the noise and a timestep per case: returns (image, label, (), {"mask", "noise", "timesteps"}).

    MONAI's ``DiffusionPrepareBatch`` noises ``batch["image"]``; for segmentation the mask is diffused instead.
    """

    def __init__(self, num_train_timesteps: int) -> None:
        self.num_train_timesteps = num_train_timesteps

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        noise = torch.randn_like(label, dtype=torch.float32)
        timesteps = torch.randint(0, self.num_train_timesteps, (label.shape[0],), device=label.device)
        return image, label, (), {"mask": label, "noise": noise, "timesteps": timesteps}


class SegDiffusionTrainingInferer(Inferer):
    """Noises the {0,1} mask scaled to [-1, 1] to x_t and predicts its noise and the anchor segmentation."""

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__()
        self.scheduler = scheduler

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        mask: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        x_t = self.scheduler.add_noise(original_samples=mask.float() * 2 - 1, noise=noise, timesteps=timesteps)
        noise_pred, anchor = network(x_t, timesteps, image=inputs, with_anchor=True)
        return {"noise_pred": noise_pred, "noise": noise, "anchor": anchor, "timesteps": timesteps}


class MedSegDiffLoss(nn.Module):
    """Eq. 3: L_n + [t = 0 mod alpha] (L_dice + beta L_ce), per case with its own diffusion timestep t.

    The anchor logits hold one sigmoid channel per foreground class, so L_ce is the binary cross-entropy per channel
    (for a single class it is exactly the two-class cross-entropy).
    """

    def __init__(self, alpha: int = 5, beta: float = 10.0) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.dice = DiceLoss(sigmoid=True, reduction="none")

    def forward(self, pred: Mapping[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        label = label.float()
        l_n = F.mse_loss(pred["noise_pred"].float(), pred["noise"], reduction="none").flatten(1).mean(1)
        anchor = pred["anchor"].float()
        l_dice = self.dice(anchor, label).flatten(1).mean(1)
        l_ce = F.binary_cross_entropy_with_logits(anchor, label, reduction="none").flatten(1).mean(1)
        gate = (pred["timesteps"] % self.alpha == 0).float()
        return (l_n + gate * (l_dice + self.beta * l_ce)).mean()
