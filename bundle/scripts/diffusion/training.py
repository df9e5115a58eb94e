"""Diffusion training pieces for segmentation: the LABEL is diffused, the image is the condition (eq. 1-3)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.inferers import Inferer
from monai.losses import DiceLoss
from monai.networks.schedulers import Scheduler
from torch import nn

SELF_CONDITION_SHARE = 0.5  # share of the batches trained with an x0 estimate as input (Chen et al. 2022)
X0_PROBABILITY_EPS = 1e-4  # the x0 loss: (x0 + 1) / 2 kept inside (0, 1) for the cross-entropy
ANCHOR_FIELD_GRID = 8  # anchor corruption: the random logit field's knots per side (blobs of about 1/8 of the image)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type (``None``: no autocast)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


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


def predicted_x0(
    scheduler: Scheduler, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The x0 that a denoiser ``prediction`` at (x_t, t) implies, for ``scheduler.prediction_type``, in [-1, 1]."""
    kind = scheduler.prediction_type
    if kind == "sample":
        return prediction.clamp(-1, 1)
    abar = scheduler.alphas_cumprod.to(x_t.device)[timesteps.long()].view(-1, *([1] * (x_t.ndim - 1)))
    if kind == "epsilon":
        return ((x_t - (1 - abar).sqrt() * prediction) / abar.sqrt()).clamp(-1, 1)
    return (abar.sqrt() * x_t - (1 - abar).sqrt() * prediction).clamp(-1, 1)


def implied_noise(scheduler: Scheduler, x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The noise that takes the true ``x0`` to ``x_t`` at ``timesteps`` (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps)."""
    abar = scheduler.alphas_cumprod.to(x_t.device)[timesteps.long()].view(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def smooth_field(like: torch.Tensor, max_std: float, grid: int = ANCHOR_FIELD_GRID) -> torch.Tensor:
    """A spatially smooth Gaussian field shaped like ``like`` (B, K, H, W): ``grid`` x ``grid`` knots upsampled
    bilinearly; each case's standard deviation is drawn uniformly from [0, ``max_std``]."""
    b, k = like.shape[:2]
    std = torch.rand(b, 1, 1, 1, device=like.device) * max_std
    knots = torch.randn(b, k, grid, grid, device=like.device) * std
    return F.interpolate(knots, size=like.shape[-2:], mode="bilinear", align_corners=False).to(like.dtype)


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
        recycling: share of the batches trained by recycling (Fu et al., MELBA 2023): x0 is first predicted without
            gradient from the mask noised to t = T - 1 (as sampling starts), that prediction is noised to x_t, and the
            denoiser learns to recover the true mask from it. 0: the paper's training. Not in the paper.
        anchor_corruption: for a ``concat_anchor`` network, the largest standard deviation (in logits) of a smooth
            random field (:func:`smooth_field`) added to the anchor that the denoiser sees next to x_t, so that it
            learns to correct the anchor rather than copy it; each case draws its own strength in [0, this]. The
            anchor loss, U-SA and the SS-Former see the anchor unchanged. 0: off. Not in the paper.

    With a ``self_condition`` network (Chen et al., "Analog Bits", 2022), half of the batches first estimate x0 from
    x_t without gradient and feed that estimate back as the denoiser's extra input, as sampling does at every step.

    ``warmup`` (set by :class:`AnchorWarmup`): only the Condition Model runs, for the anchor term of eq. 3.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        snr_gamma: float | None = None,
        autocast_dtype: torch.dtype | None = None,
        recycling: float = 0.0,
        anchor_corruption: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= recycling <= 1.0:
            raise ValueError(f"recycling is a share of the batches in [0, 1], got {recycling}.")
        if anchor_corruption < 0:
            raise ValueError(f"anchor_corruption is a standard deviation in logits (>= 0), got {anchor_corruption}.")
        self.scheduler = scheduler
        self.snr_gamma = snr_gamma
        self.autocast_dtype = autocast_dtype
        self.recycling = recycling
        self.anchor_corruption = anchor_corruption
        self.warmup = False

    @torch.no_grad()
    def recycled_x0(self, inputs: torch.Tensor, network: nn.Module, x0: torch.Tensor) -> torch.Tensor:
        """The denoiser's x0 estimate from the true mask noised to the last training timestep (no gradient)."""
        last = torch.full((x0.shape[0],), self.scheduler.num_train_timesteps - 1, device=x0.device, dtype=torch.long)
        x_last = self.scheduler.add_noise(original_samples=x0, noise=torch.randn_like(x0), timesteps=last)
        with autocast(inputs.device, self.autocast_dtype):
            out = network(x_last, last, image=inputs)
        return predicted_x0(self.scheduler, out.float(), x_last, last)

    @torch.no_grad()
    def estimated_x0(
        self, inputs: torch.Tensor, network: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The denoiser's x0 estimate at (x_t, t) without self-conditioning input (no gradient)."""
        with autocast(inputs.device, self.autocast_dtype):
            out = network(x_t, timesteps, image=inputs)
        return predicted_x0(self.scheduler, out.float(), x_t, timesteps)

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: nn.Module, mask: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if self.warmup:
            with autocast(inputs.device, self.autocast_dtype):
                anchor = unwrap(network).condition(inputs).anchor_logits
            return {"anchor": anchor.float(), "timesteps": timesteps}
        x0 = mask.float() * 2 - 1
        recycle = self.recycling > 0 and torch.rand(()).item() < self.recycling
        start = self.recycled_x0(inputs, network, x0) if recycle else x0
        x_t = self.scheduler.add_noise(original_samples=start, noise=noise, timesteps=timesteps)
        # the target always points at the true mask: from a recycled x_t, its noise is the one implied by the truth
        target_noise = implied_noise(self.scheduler, x0, x_t, timesteps) if recycle else noise
        extra = {}  # a self_condition network gets the x0 estimate in SELF_CONDITION_SHARE of the batches
        if getattr(unwrap(network), "self_condition", False) and torch.rand(()).item() < SELF_CONDITION_SHARE:
            extra["x_self_cond"] = self.estimated_x0(inputs, network, x_t, timesteps)
        if self.anchor_corruption > 0 and getattr(unwrap(network), "concat_anchor", False):
            extra["anchor_offset"] = smooth_field(x0, self.anchor_corruption)
        with autocast(inputs.device, self.autocast_dtype):
            prediction, anchor = network(x_t, timesteps, image=inputs, with_anchor=True, **extra)
        return {
            "prediction": prediction.float(),
            "target": prediction_target(self.scheduler, x0, target_noise, timesteps),
            "weight": min_snr_weight(self.scheduler, timesteps, self.snr_gamma),
            "x0": predicted_x0(self.scheduler, prediction.float(), x_t, timesteps),
            "anchor": anchor.float(),
            "timesteps": timesteps,
        }


class AnchorWarmup:
    """Curriculum: the first ``iterations`` training iterations train the Condition Model alone as a plain
    segmenter (eq. 3's anchor term at every step, no denoiser call), then joint training starts. Not in the paper.

    With ``learning_rate`` (and the ``optimizer``) the warm-up runs at that learning rate, as a supervised segmenter
    would; joint training then uses the optimizer's own (the configured ``learning_rate``)."""

    def __init__(
        self,
        inferer: SegDiffusionTrainingInferer,
        iterations: int = 0,
        optimizer: torch.optim.Optimizer | None = None,
        learning_rate: float | None = None,
    ) -> None:
        if iterations < 0:
            raise ValueError(f"anchor_warmup_iterations must be >= 0, got {iterations}.")
        if learning_rate is not None and (optimizer is None or learning_rate <= 0):
            raise ValueError(f"a warm-up learning rate needs the optimizer and must be > 0, got {learning_rate}.")
        self.inferer, self.iterations = inferer, iterations
        self.optimizer, self.learning_rate = optimizer, learning_rate
        # the joint phase's rates; the resume handler also restores the configured rate at start
        self.joint_lrs = [group["lr"] for group in optimizer.param_groups] if optimizer is not None else []

    def attach(self, engine: Engine) -> None:
        if self.iterations:
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.inferer.warmup = engine.state.iteration <= self.iterations
        if self.learning_rate is not None and self.optimizer is not None:
            for group, joint in zip(self.optimizer.param_groups, self.joint_lrs, strict=True):
                group["lr"] = self.learning_rate if self.inferer.warmup else joint


class MedSegDiffLoss(nn.Module):
    """Eq. 3: L_n + [t = 0 mod alpha] (L_dice + beta L_ce), per case with its own diffusion timestep t.

    L_n is the (optionally min-SNR weighted) MSE of the prediction target: the noise in the paper, or x0 / v
    (``prediction_type``). The anchor logits hold one sigmoid channel per foreground class, so L_ce is the binary
    cross-entropy per channel (for a single class it is exactly the two-class cross-entropy). The two terms' batch
    means are written back into ``pred`` as ``loss_n`` and ``loss_anchor`` (detached), for logging. During an
    :class:`AnchorWarmup` (no denoiser prediction) the anchor term is applied at every step and L_n is 0.

    ``x0_weight`` > 0 adds x0_weight (L_dice + beta L_ce) of the denoiser's own x0 estimate at every step, read as a
    foreground probability (x0 + 1) / 2, as segmentation losses on x0 train diffusion segmenters in Fu et al. (MELBA
    2023); its batch mean is logged as ``loss_x0``. 0: the paper's loss. Not in the paper.
    """

    def __init__(self, alpha: int = 5, beta: float = 10.0, x0_weight: float = 0.0) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 1:
            raise ValueError(f"loss#alpha must be an integer >= 1 (1: the anchor term at every step), got {alpha!r}.")
        for key, value in (("loss#beta", beta), ("x0_loss_weight", x0_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}.")
        self.alpha, self.beta, self.x0_weight = alpha, beta, x0_weight
        self.dice = DiceLoss(sigmoid=True, reduction="none")
        self.dice_probability = DiceLoss(reduction="none")

    def forward(self, pred: dict[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        label = label.float()
        anchor = pred["anchor"]
        warmup = "prediction" not in pred  # AnchorWarmup: the anchor term alone, at every step
        if warmup:
            l_n = torch.zeros(anchor.shape[0], device=anchor.device)
        else:
            mse = F.mse_loss(pred["prediction"], pred["target"], reduction="none").flatten(1).mean(1)
            l_n = pred["weight"] * mse
        l_dice = self.dice(anchor, label).flatten(1).mean(1)
        l_ce = F.binary_cross_entropy_with_logits(anchor, label, reduction="none").flatten(1).mean(1)
        gate = torch.ones_like(l_n) if warmup else (pred["timesteps"] % self.alpha == 0).float()
        l_anchor = gate * (l_dice + self.beta * l_ce)
        pred["loss_n"], pred["loss_anchor"] = l_n.detach(), l_anchor.detach()
        if self.x0_weight and not warmup:
            p = ((pred["x0"].float() + 1) / 2).clamp(X0_PROBABILITY_EPS, 1 - X0_PROBABILITY_EPS)
            bce = -(label * p.log() + (1 - label) * (1 - p).log())  # by hand: F.binary_cross_entropy refuses autocast
            l_x0 = self.x0_weight * (
                self.dice_probability(p, label).flatten(1).mean(1) + self.beta * bce.flatten(1).mean(1)
            )
            pred["loss_x0"] = l_x0.detach()
            l_n = l_n + l_x0
        return (l_n + l_anchor).mean()
