"""Ensemble sampling inferer: N masks per image from a MONAI scheduler, the Condition Model run once per image."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer
from monai.networks.schedulers import Scheduler
from torch import nn

from .diffusion import unwrap


class DiffusionSegmentationInferer(Inferer):
    """Runs the reverse diffusion for ``ensemble_size`` members per image as one batch and fuses them.

    Args:
        scheduler: a MONAI scheduler sharing the training noise schedule (``DDIMScheduler`` for few steps).
        num_inference_steps: sampling steps.
        ensemble_size: samples per image (the paper uses 10).
        fusion: ``"mean"`` (per-pixel mean of the binarised samples, a soft mask in [0, 1]), ``"samples"`` (the
            binarised samples stacked as (B, N*K, H, W), for a fusion postprocessing such as STAPLE), or a
            callable mapping (B, N, K, H, W) samples to the output.
        seed: seeds the sampling noise at every call, so the same input gives the same output; ``None`` uses the
            global generator.
        slice_axis: spatial axis along which a 3D volume (B, C, H, W, D) is sliced; volumes go through
            ``SliceInferer`` with ``slice_batch`` slices at a time, so memory is bounded by slices, not the volume.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the network under autocast.
        eta: DDIM's eta (0: deterministic DDIM steps; ignored by other schedulers).
        channels_last: run the network in channels_last memory format (faster convolutions with bf16 on CPUs).
        progress: show a per-slice progress bar for volumes.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        num_inference_steps: int = 10,
        ensemble_size: int = 1,
        fusion: str | Callable[[torch.Tensor], torch.Tensor] = "mean",
        seed: int | None = 0,
        slice_axis: int = 2,
        slice_batch: int = 8,
        autocast_dtype: torch.dtype | None = None,
        eta: float = 0.0,
        progress: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(fusion, str) and fusion not in ("mean", "samples"):
            raise ValueError(f"fusion must be 'mean', 'samples' or a callable, got {fusion!r}.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.ensemble_size = ensemble_size
        self.fusion = fusion
        self.seed = seed
        self.slice_axis = slice_axis
        self.slice_batch = slice_batch
        self.autocast_dtype = autocast_dtype
        self.eta = eta
        self.progress = progress
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def _step_kwargs(self, generator: torch.Generator | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"generator": generator}
        if "eta" in inspect.signature(self.scheduler.step).parameters:  # DDIM
            kwargs["eta"] = self.eta
        return kwargs

    @torch.no_grad()
    def sample(self, image: torch.Tensor, network: nn.Module, generator: torch.Generator | None = None) -> torch.Tensor:
        """Binarised ensemble samples (B, N, K, H, W) for a batch of 2D images (B, C, H, W)."""
        net = unwrap(network)
        b, n, k = image.shape[0], self.ensemble_size, net.out_channels
        autocast = (
            torch.autocast(image.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        self.scheduler.set_timesteps(self.num_inference_steps, device=image.device)
        if self.memory_format == torch.channels_last:
            net.to(memory_format=torch.channels_last)
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast:  # the Condition Model runs once per image, shared by every step and ensemble member
            condition = net.condition(image).repeat_interleave(n)
        x = torch.randn((b * n, k, *image.shape[2:]), generator=generator, device=image.device)
        x = x.contiguous(memory_format=self.memory_format)
        step_kwargs = self._step_kwargs(generator)
        for t in self.scheduler.timesteps:
            with autocast:
                eps = net(x, t, condition=condition)
            x, _ = self.scheduler.step(eps.float(), int(t), x, **step_kwargs)
        return (x > 0).float().reshape(b, n, k, *image.shape[2:])

    def _fuse(self, samples: torch.Tensor) -> torch.Tensor:
        if callable(self.fusion):
            return self.fusion(samples)
        if self.fusion == "mean":
            return samples.mean(dim=1)
        return samples.flatten(1, 2)

    def _sample_2d(self, image: torch.Tensor, network: nn.Module, generator: torch.Generator | None) -> torch.Tensor:
        return self._fuse(self.sample(image, network, generator))

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        if inputs.ndim == 4:
            return self._sample_2d(inputs, network, generator)
        if inputs.ndim != 5:
            raise ValueError(f"Expected a 2D (B, C, H, W) or 3D (B, C, H, W, D) batch, got {tuple(inputs.shape)}.")
        in_plane = [s for i, s in enumerate(inputs.shape[2:]) if i != self.slice_axis]
        slicer = SliceInferer(
            roi_size=in_plane,
            sw_batch_size=self.slice_batch,
            spatial_dim=self.slice_axis,
            overlap=0.0,
            progress=self.progress,
        )
        return slicer(inputs, lambda x: self._sample_2d(x, network, generator))
