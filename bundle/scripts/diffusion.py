"""Diffusion training pieces for segmentation: the LABEL is diffused, the image is the condition (eq. 1-3)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.inferers import Inferer
from monai.losses import DiceLoss
from monai.networks.schedulers import Scheduler
from torch import nn

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the module itself)."""
    return getattr(network, "module", network)


def stratified_timesteps(
    batch: int, num_train_timesteps: int, groups: int | None, device: torch.device | str | None = None
) -> torch.Tensor:
    """(batch,) training timesteps drawn in ``groups`` distinct values (``None``: one per case).

    [0, T) is cut into ``groups`` equal strata, one timestep is drawn uniformly in each, and the cases are dealt to
    the strata in random order: every case's t is still uniform on {0, ..., T-1}, while the timestep-dependent parts
    of the network (the NBP-Filters) run once per group instead of once per case.
    """
    if groups is None or groups >= batch:
        return torch.randint(0, num_train_timesteps, (batch,), device=device)
    # floor((g + u) T / G) with u ~ U[0, 1): exactly uniform over the integers of [0, T) once g is uniform
    strata = (torch.arange(groups, device=device) + torch.rand(groups, device=device)) * num_train_timesteps / groups
    strata = strata.long().clamp_max(num_train_timesteps - 1)[torch.randperm(groups, device=device)]
    return strata[torch.randperm(batch, device=device) % groups]


class SegDiffusionPrepareBatch(PrepareBatch):
    """Draws the noise and the timesteps: returns (image, label, (), {"mask", "noise", "timesteps"}).

    MONAI's ``DiffusionPrepareBatch`` noises ``batch["image"]``; for segmentation the mask is diffused instead.
    ``timestep_groups`` (G): the batch holds G distinct timesteps (``stratified_timesteps``); ``None``: one per case.
    """

    def __init__(self, num_train_timesteps: int, timestep_groups: int | None = None) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.timestep_groups = timestep_groups

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        noise = torch.randn_like(label, dtype=torch.float32)
        timesteps = stratified_timesteps(label.shape[0], self.num_train_timesteps, self.timestep_groups, label.device)
        return image, label, (), {"mask": label, "noise": noise, "timesteps": timesteps}


def snr(scheduler: Scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio abar_t / (1 - abar_t) of the training schedule at ``timesteps``."""
    abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps.long()]
    return abar / (1 - abar)


def prediction_target(
    scheduler: Scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the denoiser regresses for ``scheduler.prediction_type``: the noise, x0, or v = sqrt(abar) eps -
    sqrt(1 - abar) x0 (Salimans & Ho 2022)."""
    kind = scheduler.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    abar = scheduler.alphas_cumprod.to(x0.device)[timesteps.long()].view(-1, *([1] * (x0.ndim - 1)))
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0


def min_snr_weight(scheduler: Scheduler, timesteps: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Per-case weight of the diffusion loss. ``None``: 1 (the plain MSE of the prediction target). Otherwise
    min-SNR-gamma (Hang et al., ICCV 2023), expressed for the prediction target: min(SNR, gamma) on the x0 error,
    i.e. min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) for x0 and min(SNR, gamma) / (SNR + 1) for v."""
    if gamma is None:
        return torch.ones(timesteps.shape, device=timesteps.device)
    s = snr(scheduler, timesteps).float()
    clipped = s.clamp(max=gamma)
    kind = scheduler.prediction_type
    return clipped / s if kind == "epsilon" else clipped if kind == "sample" else clipped / (s + 1)


class SegDiffusionTrainingInferer(Inferer):
    """Noises the {0,1} mask scaled to [-1, 1] to x_t; returns the denoiser's prediction, its target (for the
    scheduler's ``prediction_type``), the per-case loss weight and the anchor segmentation.

    Args:
        scheduler: the training noise schedule; its ``prediction_type`` sets the target.
        snr_gamma: min-SNR-gamma loss weighting (``None``: unweighted, the paper's L_n for ``epsilon``).
        autocast_dtype: e.g. ``torch.bfloat16``: the network runs under autocast (the loss stays in float32).
    """

    def __init__(
        self, scheduler: Scheduler, snr_gamma: float | None = None, autocast_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.snr_gamma = snr_gamma
        self.autocast_dtype = autocast_dtype

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        mask: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        x0 = mask.float() * 2 - 1
        x_t = self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=timesteps)
        autocast = (
            torch.autocast(inputs.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            prediction, anchor = network(x_t, timesteps, image=inputs, with_anchor=True)
        return {
            "prediction": prediction.float(),
            "target": prediction_target(self.scheduler, x0, noise, timesteps),
            "weight": min_snr_weight(self.scheduler, timesteps, self.snr_gamma),
            "anchor": anchor.float(),
            "timesteps": timesteps,
        }


class MedSegDiffLoss(nn.Module):
    """Eq. 3: L_n + [t = 0 mod alpha] (L_dice + beta L_ce), per case with its own diffusion timestep t.

    L_n is the (optionally min-SNR weighted) MSE of the prediction target: the noise in the paper, or x0 / v
    (``prediction_type``). The anchor logits hold one sigmoid channel per foreground class, so L_ce is the binary
    cross-entropy per channel (for a single class it is exactly the two-class cross-entropy). The two terms' batch
    means are written back into ``pred`` as ``loss_n`` and ``loss_anchor`` (detached), for logging.
    """

    def __init__(self, alpha: int = 5, beta: float = 10.0) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.dice = DiceLoss(sigmoid=True, reduction="none")

    def forward(self, pred: dict[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        label = label.float()
        mse = F.mse_loss(pred["prediction"], pred["target"], reduction="none").flatten(1).mean(1)
        l_n = pred["weight"] * mse
        anchor = pred["anchor"]
        l_dice = self.dice(anchor, label).flatten(1).mean(1)
        l_ce = F.binary_cross_entropy_with_logits(anchor, label, reduction="none").flatten(1).mean(1)
        gate = (pred["timesteps"] % self.alpha == 0).float()
        l_anchor = gate * (l_dice + self.beta * l_ce)
        pred["loss_n"], pred["loss_anchor"] = l_n.detach(), l_anchor.detach()
        return (l_n + l_anchor).mean()
