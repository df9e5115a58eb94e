"""Ensemble sampling inferer: N masks per image from a MONAI scheduler, the Condition Model run once per image."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer
from monai.networks.schedulers import Scheduler
from torch import nn

from ..data.transforms import stack_context
from ..networks.unet import ConditionOutput
from .training import autocast, unwrap

# flip_members: the flip of member j is FLIPS[j % 4] (none, horizontal, vertical, both), over the last two axes
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def _match_depth(donor: torch.Tensor, shape: torch.Size, slice_axis: int) -> torch.Tensor:
    """``donor`` with as many slices along ``slice_axis`` as ``shape`` (nearest slice); 2D batches pass through."""
    if donor.ndim == 4 or donor.shape == shape:
        return donor
    axis = 2 + slice_axis
    index = torch.linspace(0, donor.shape[axis] - 1, shape[axis], device=donor.device).round().long()
    return donor.index_select(axis, index)


class DiffusionSegmentationInferer(Inferer):
    """Runs the reverse diffusion for ``ensemble_size`` members per image as one batch and fuses them.

    Args:
        scheduler: a MONAI scheduler sharing the training noise schedule (``DDIMScheduler`` for few steps).
        num_inference_steps: sampling steps.
        ensemble_size: samples per image (the paper uses 10).
        fusion: ``"mean"`` (per-pixel mean of the members, a soft mask in [0, 1]), ``"samples"`` (the members
            stacked as (B, N*K, H, W), for a fusion postprocessing such as STAPLE, which binarises them at 0.5), or a
            callable mapping (B, N, K, H, W) members to the output.
        seed: seeds the sampling noise at every call, so the same input gives the same output; ``None`` uses the
            global generator.
        slice_axis: spatial axis along which a 3D volume (B, C, H, W, D) is sliced; volumes go through
            ``SliceInferer`` with ``slice_batch`` slices at a time, so memory is bounded by slices, not the volume.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the network under autocast.
        eta: DDIM's eta (0: deterministic DDIM steps; ignored by other schedulers).
        channels_last: run the network in channels_last memory format (faster convolutions with bf16 on CPUs).
        progress: show a per-slice progress bar for volumes.
        start_t: anchor-initialised sampling: start the reverse chain at the last sampling timestep <= ``start_t``
            from q(x_t | anchor), the Condition Model's anchor mask noised to t, instead of from pure noise at T
            (``None``). Fewer steps run: only those below ``start_t``.
        flip_members: test-time augmentation inside the ensemble: member j samples with the condition of the image
            flipped by ``FLIPS[j % 4]`` (none, horizontal, vertical, both) and its mask is flipped back before the
            fusion, so that the members also differ in what the Condition Model sees. Not in the paper.
        soft_members: members keep the denoiser's final mask estimate in [0, 1]; ``False``: binary members.
        context_slices: volumes: each slice also receives this many neighbours on each side as extra image channels
            (2.5D, :func:`scripts.data.transforms.stack_context`, as training's ``SliceContextd``). Not in the paper.
        anchor_probability: with ``fusion="samples"``, append the Condition Model's anchor probability (sigmoid of
            its anchor logits, K channels) after the N*K member channels, for an uncertainty that mixes it in
            (``EnsembleFusiond(anchor_weight=...)``). Not in the paper.

    Called with ``donor``, another case's image (``PrepareBatchExtraInput({"donor": "donor"})`` passes it), it also
    returns the anchor mask (``"anchor"``) and the samples drawn with the donor's condition (``"pred_swapped"``, same
    noise) next to ``"pred"``: the image-reliance diagnostic.
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
        start_t: int | None = None,
        flip_members: bool = False,
        soft_members: bool = True,
        context_slices: int = 0,
        anchor_probability: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(fusion, str) and fusion not in ("mean", "samples"):
            raise ValueError(f"fusion must be 'mean', 'samples' or a callable, got {fusion!r}.")
        if anchor_probability and fusion != "samples":
            raise ValueError(f"anchor_probability needs fusion='samples', got {fusion!r}.")
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
        self.start_t = start_t
        self.flip_members = flip_members
        self.soft_members = soft_members
        self.context_slices = context_slices
        self.anchor_probability = anchor_probability

    def _step_kwargs(self, generator: torch.Generator | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"generator": generator}
        if "eta" in inspect.signature(self.scheduler.step).parameters:  # DDIM
            kwargs["eta"] = self.eta
        return kwargs

    def _timesteps(self) -> torch.Tensor:
        timesteps = self.scheduler.timesteps
        if self.start_t is None:
            return timesteps
        kept = timesteps[timesteps <= self.start_t]
        if len(kept) == 0:
            raise ValueError(f"start_t={self.start_t} is below every sampling timestep {timesteps.tolist()}.")
        return kept

    @torch.no_grad()
    def condition(self, image: torch.Tensor, network: nn.Module) -> ConditionOutput:
        """The Condition Model's output for a batch of 2D images (run once, shared by all steps and members)."""
        net = unwrap(network)
        if self.memory_format == torch.channels_last:
            net.to(memory_format=torch.channels_last)
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast(image.device, self.autocast_dtype):
            return net.condition(image)

    def member_flips(self) -> list[tuple[int, ...]]:
        """The axes each ensemble member's image is flipped along (all ``()`` without ``flip_members``)."""
        return [FLIPS[j % len(FLIPS)] if self.flip_members else () for j in range(self.ensemble_size)]

    @torch.no_grad()
    def member_condition(
        self, image: torch.Tensor, network: nn.Module, own: ConditionOutput | None = None
    ) -> ConditionOutput:
        """Every member's condition, (B * N, ...) in member order: the image's Condition Model output (``own``, when
        already computed) repeated, or with ``flip_members`` the output for each member's flipped image (each
        distinct flip run once)."""
        flips = self.member_flips()
        own = own if own is not None else self.condition(image, network)
        if not self.flip_members:
            return own.repeat_interleave(len(flips))
        per_flip = {f: self.condition(image.flip(f), network) if f else own for f in dict.fromkeys(flips)}
        members = [per_flip[f] for f in flips]  # (B, ...) each; stacked to (B, N, ...), member order
        return ConditionOutput(
            *(None if parts[0] is None else torch.stack(parts, 1).flatten(0, 1) for parts in zip(*members, strict=True))
        )

    @torch.no_grad()
    def sample(
        self,
        image: torch.Tensor,
        network: nn.Module,
        generator: torch.Generator | None = None,
        condition: ConditionOutput | None = None,
    ) -> torch.Tensor:
        """Ensemble members (B, N, K, H, W) in [0, 1] (binary without ``soft_members``) for a batch of 2D images
        (B, C, H, W); ``condition``, the members' conditions from ``member_condition`` of another image, replaces the
        image's own (the image-reliance diagnostic)."""
        net = unwrap(network)
        b, n, k = image.shape[0], self.ensemble_size, net.out_channels
        self.scheduler.set_timesteps(self.num_inference_steps, device=image.device)
        timesteps = self._timesteps()
        condition = condition if condition is not None else self.member_condition(image, network)
        x = torch.randn((b * n, k, *image.shape[2:]), generator=generator, device=image.device)
        if self.start_t is not None:  # x_{t_s} ~ q(x_{t_s} | anchor)
            anchor = (condition.anchor_logits.float() > 0).float() * 2 - 1
            x = self.scheduler.add_noise(anchor, x, timesteps[:1].expand(b * n))
        x = x.contiguous(memory_format=self.memory_format)
        step_kwargs = self._step_kwargs(generator)
        self_condition = getattr(net, "self_condition", False)  # it gets the previous step's x0 estimate
        extra: dict[str, torch.Tensor] = {}
        for t in timesteps:
            with autocast(image.device, self.autocast_dtype):
                out = net(x, t, condition=condition, **extra)
            x, x0 = self.scheduler.step(out.float(), int(t), x, **step_kwargs)
            if self_condition:
                extra = {"x_self_cond": x0.clamp(-1, 1)}
        x = ((x.float().clamp(-1, 1) + 1) / 2) if self.soft_members else (x > 0).float()
        samples = x.reshape(b, n, k, *image.shape[2:])
        for j, flip in enumerate(self.member_flips()):
            if flip:  # back to the image's orientation
                samples[:, j] = samples[:, j].flip(flip)
        return samples

    def _fuse(self, samples: torch.Tensor, own: ConditionOutput) -> torch.Tensor:
        if callable(self.fusion):
            return self.fusion(samples)
        if self.fusion == "mean":
            return samples.mean(dim=1)
        if self.anchor_probability:  # (B, N*K + K, H, W): the members, then the anchor probability
            return torch.cat([samples.flatten(1, 2), torch.sigmoid(own.anchor_logits.float())], dim=1)
        return samples.flatten(1, 2)

    def _sample_2d(
        self, image: torch.Tensor, network: nn.Module, generator: torch.Generator | None, diagnostics: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        if not diagnostics:
            own = self.condition(image, network)
            return self._fuse(self.sample(image, network, generator, self.member_condition(image, network, own)), own)
        image, donor = image.chunk(2, dim=1)  # the donor case's image rides along as extra channels
        own, other = self.condition(image, network), self.condition(donor, network)
        state = generator.get_state() if generator is not None else None
        pred = self._fuse(self.sample(image, network, generator, self.member_condition(image, network, own)), own)
        if generator is not None:  # the swapped-condition run draws the same noise
            generator.set_state(state)
        swapped = self._fuse(
            self.sample(image, network, generator, self.member_condition(donor, network, other)), other
        )
        return {"pred": pred, "anchor": (own.anchor_logits > 0).float(), "pred_swapped": swapped}

    def __call__(
        self, inputs: torch.Tensor, network: nn.Module, *args: Any, donor: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """``donor``: another case's image (same channels and in-plane size; a volume's depth is matched by nearest
        slice) for the image-reliance diagnostic."""
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        diagnostics = donor is not None
        if diagnostics:
            donor = _match_depth(donor.to(inputs), inputs.shape, self.slice_axis)
        if inputs.ndim == 5 and self.context_slices:  # each slice's neighbours as extra channels (2.5D)
            context = self.context_slices
            inputs = torch.stack([stack_context(v, context, 1 + self.slice_axis) for v in inputs])
            if donor is not None:
                donor = torch.stack([stack_context(v, context, 1 + self.slice_axis) for v in donor])
        if diagnostics:
            inputs = torch.cat([inputs, donor], dim=1)
        if inputs.ndim == 4:
            return self._sample_2d(inputs, network, generator, diagnostics)
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
        return slicer(inputs, lambda x: self._sample_2d(x, network, generator, diagnostics))
