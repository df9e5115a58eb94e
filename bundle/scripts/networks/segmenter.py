"""The bundle's inference as one module, ``forward(image) -> segmentation``, for tools that call a network with the
image alone (MONAI's ``verify_net_in_out``, the model zoo's data-shape check): ``MedSegDiffV2`` itself also needs the
noisy mask and the timestep."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..diffusion.fusion import METHODS, EnsembleFusiond


class EnsembleSegmenter(nn.Module):
    """Samples an ensemble with ``inferer`` and fuses it as the inference postprocessing does (``EnsembleFusiond``).

    Args:
        network: the denoiser (``MedSegDiffV2``), e.g. ``@network_def`` with its weights loaded.
        inferer: ``inferer(image, network)`` returning the members as (B, N*K, *spatial) channels in [0, 1],
            member-major (``DiffusionSegmentationInferer`` with ``fusion="samples"``, as in ``configs/inference.yaml``).
        ensemble_size: N, the members per image the inferer draws.
        method: the fusion, ``"staple"`` | ``"vote"`` | ``"mean"``.

    ``forward`` returns (B, K, *spatial) float32, one {0, 1} channel per foreground class (channel k is label k + 1 of
    the fused label map), on the image's device.
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor],
        ensemble_size: int,
        method: str = "staple",
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        self.network = network
        self.inferer = inferer
        self.ensemble_size = ensemble_size
        self.fuse = EnsembleFusiond("pred", ensemble_size, method, uncertainty_key=None)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        members = self.inferer(image, self.network)
        if not isinstance(members, torch.Tensor) or members.shape[1] % self.ensemble_size:
            shape = tuple(members.shape) if isinstance(members, torch.Tensor) else type(members).__name__
            raise ValueError(
                f"the inferer returned {shape}, not N*K member channels for ensemble_size={self.ensemble_size} "
                "(use DiffusionSegmentationInferer with fusion='samples')."
            )
        classes = members.shape[1] // self.ensemble_size
        labels = torch.stack([self.fuse({"pred": case})["pred"] for case in members])  # (B, 1, *spatial) 0..K
        foreground = torch.arange(1, classes + 1, device=labels.device).view(1, -1, *[1] * (labels.ndim - 2))
        return (labels == foreground).float().to(image.device)
