"""NBP-Filter: the timestep-conditioned neural band-pass filter of the SS-Former (Fig. 1c)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def frequency_coordinates(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """Coordinate map of the affinity M: (4, L, L) with the normalised 2D frequencies of query and key tokens."""
    h, w = grid
    fy = torch.fft.fftfreq(h, device=device) * 2  # in [-1, 1)
    fx = torch.fft.fftfreq(w, device=device) * 2
    freq = torch.stack(torch.meshgrid(fy, fx, indexing="ij"), dim=0).reshape(2, h * w)  # (2, L)
    n = h * w
    return torch.cat([freq[:, :, None].expand(2, n, n), freq[:, None, :].expand(2, n, n)], dim=0)


class NBPBlock(nn.Module):
    """Conv -> layer norm -> scale and shift from the timestep embedding (two MLP layers) -> SiLU."""

    def __init__(self, in_channels: int, width: int, emb_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.norm = nn.GroupNorm(1, width, affine=False)  # layer norm over (C, H, W)
        self.emb_mlp = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU(), nn.Linear(width, 2 * width))
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.emb_mlp(emb)[..., None, None].chunk(2, dim=1)
        return self.act(self.norm(self.conv(x)) * (1 + scale) + shift)


class NBPFilter(nn.Module):
    """Maps the frequency coordinate map through R conv blocks scaled/shifted by t, then a Sigmoid: W_t in (0, 1)."""

    def __init__(self, emb_dim: int, heads: int = 1, width: int = 16, num_blocks: int = 6) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([NBPBlock(4 if i == 0 else width, width, emb_dim) for i in range(num_blocks)])
        self.out = nn.Conv2d(width, heads, 1)

    def forward(self, emb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``emb``: (B, E) timestep embeddings -> filter (B, heads, L, L), L = grid[0] * grid[1].

        The filter depends on t only, so it is computed once per distinct embedding in the batch (one during
        sampling, where every ensemble member shares the step).
        """
        if emb.shape[0] == 1:  # one shared timestep (sampling); no torch.unique, whose sizes torch.export can't trace
            unique, inverse = emb, None
        else:
            _, inverse = torch.unique(emb.detach(), dim=0, return_inverse=True)
            first = torch.full((int(inverse.max()) + 1,), emb.shape[0], device=emb.device, dtype=torch.long)
            first = first.scatter_reduce(0, inverse, torch.arange(emb.shape[0], device=emb.device), reduce="amin")
            unique = emb[first]  # differentiable: indexes the original embeddings
        coords = frequency_coordinates(grid, emb.device).to(emb.dtype)[None].expand(unique.shape[0], -1, -1, -1)
        if self.training and torch.is_grad_enabled():
            # recompute in backward: the L x L maps would otherwise hold ~0.8 GB per case at 256x256 (paper preset)
            filters = checkpoint(self._filter, coords, unique, use_reentrant=False)
        else:
            filters = self._filter(coords, unique)
        return filters if inverse is None else filters[inverse]

    def _filter(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, emb)
        return torch.sigmoid(self.out(x))
