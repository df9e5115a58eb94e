"""NBP-Filter: the timestep-conditioned neural band-pass filter of the SS-Former (Fig. 1c)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
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
        return self.act(torch.addcmul(shift, self.norm(self.conv(x)), 1 + scale))


class NBPFilter(nn.Module):
    """Maps the frequency coordinate map through R conv blocks scaled/shifted by t, then a Sigmoid: W_t in (0, 1)."""

    def __init__(self, emb_dim: int, heads: int = 1, width: int = 16, num_blocks: int = 6) -> None:
        super().__init__()
        self.heads, self.width = heads, width
        self.blocks = nn.ModuleList([NBPBlock(4 if i == 0 else width, width, emb_dim) for i in range(num_blocks)])
        self.out = nn.Conv2d(width, heads, 1)

    def forward(self, emb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``emb``: (B, E) timestep embeddings -> filter (B, heads, L, L), L = grid[0] * grid[1]."""
        return nbp_filters([self], emb, grid)[0]


def _unique_rows(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The distinct rows of ``emb`` (differentiably indexed) and the map back to the batch (``None``: one row)."""
    if emb.shape[0] == 1:  # one shared timestep (sampling); no torch.unique, whose sizes torch.export can't trace
        return emb, None
    _, inverse = torch.unique(emb.detach(), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), emb.shape[0], device=emb.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(emb.shape[0], device=emb.device), reduce="amin")
    return emb[first], inverse


def _filter_bank(filters: Sequence[NBPFilter], coords: torch.Tensor, emb: torch.Tensor) -> list[torch.Tensor]:
    """Runs the filters over their shared coordinate map: the first convolutions of all filters as one convolution
    (their weights concatenated), the rest per filter, channels-last (on a 2-core CPU, 3x faster than channels-first
    and 2x faster than one grouped convolution over all filters, docs/benchmarks.md). Returns F maps (U, heads, L, L).
    """
    first = [f.blocks[0].conv for f in filters]
    x0 = F.conv2d(coords, torch.cat([c.weight for c in first]), torch.cat([c.bias for c in first]), padding=1)
    outs = []
    for f, x in zip(filters, x0.split(filters[0].width, dim=1), strict=True):
        for i, blk in enumerate(f.blocks):
            if i:
                x = blk.conv(x)
            scale, shift = blk.emb_mlp(emb)[..., None, None].chunk(2, dim=1)
            x = blk.act(torch.addcmul(shift, blk.norm(x), 1 + scale))
        outs.append(torch.sigmoid(f.out(x)))
    return outs


def nbp_filters(
    filters: Sequence[NBPFilter], emb: torch.Tensor, grid: tuple[int, int], checkpointing: bool = False
) -> list[torch.Tensor]:
    """W_t of every filter in ``filters`` (same width, depth and heads): a list of (B, heads, L, L).

    A filter depends on t only, so it is computed once per DISTINCT timestep embedding in the batch (once per sampling
    step; once per timestep group in training), and all filters share one coordinate map and first convolution.
    ``checkpointing`` recomputes the filters in backward instead of keeping their activations (~0.1 GB per distinct t
    and filter at 256x256, paper preset).
    """
    unique, inverse = _unique_rows(emb)
    coords = frequency_coordinates(grid, emb.device).to(emb.dtype)[None].expand(unique.shape[0], -1, -1, -1)
    coords = coords.contiguous(memory_format=torch.channels_last)
    if checkpointing and torch.is_grad_enabled():
        bank = checkpoint(_filter_bank, filters, coords, unique, use_reentrant=False)
    else:
        bank = _filter_bank(filters, coords, unique)
    return [w.contiguous() if inverse is None else w.index_select(0, inverse) for w in bank]
