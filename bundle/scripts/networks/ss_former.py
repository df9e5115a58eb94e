"""Semantic Condition: the Spectrum-Space Transformer (SS-Former, Fig. 1b) with optional NBP-Filters."""

from __future__ import annotations

import torch
from torch import nn

from .nbp_filter import NBPFilter, nbp_filters


def _negated_frequencies(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """For each token of an (h, w) grid in FFT order, the index of the token holding the opposite frequency -f."""
    h, w = grid
    fy, fx = (-torch.arange(h, device=device)) % h, (-torch.arange(w, device=device)) % w
    return (fy[:, None] * w + fx[None, :]).reshape(-1)


class FourierCrossAttention(nn.Module):
    """M = (F(x_q) W^q)(F(x_kv) W^k)^H filtered by the NBP-Filter, brought back by the inverse FFT, applied to values.

    With the query and key tokens on an (h, w) grid, F is the 2D FFT over that grid (per channel). Since
    F(x) W = F(x W), M = U Q K^T U^H with U the DFT matrix; the inverse transform along both axes of M,
    IFFT_query(FFT_key(M)) / L, therefore gives back the spatial affinity Q K^T when no filter is applied, and a
    frequency-band-passed affinity when the filter W_t multiplies M. Its real part, scaled and softmax-normalised,
    weights the (spatial) values as in a standard transformer.
    """

    def __init__(
        self, dim: int, heads: int, emb_dim: int, use_filter: bool, filter_width: int, filter_blocks: int
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"SS-Former dim {dim} must be divisible by heads {heads}.")
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)  # W^q
        self.to_k = nn.Linear(dim, dim, bias=False)  # W^k
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.nbp = NBPFilter(emb_dim, heads, filter_width, filter_blocks) if use_filter else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, heads, L, dh)

    def affinity(
        self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int], w_t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Spatial affinity (B, heads, L, L) computed in Fourier space, band-passed by the filter ``w_t`` if given."""
        b, nh, n, dh = q.shape
        h, w = grid
        spec_q = torch.fft.fft2(q.float().reshape(b, nh, h, w, dh), dim=(2, 3)).reshape(b, nh, n, dh)
        spec_k = torch.fft.fft2(k.float().reshape(b, nh, h, w, dh), dim=(2, 3)).reshape(b, nh, n, dh)
        # IFFT_query(FFT_key(M W_t)) as one 4-D FFT: an inverse DFT is the forward DFT of the frequency-reversed input
        # divided by L, and Q is real, so F(Q) at -f is conj(F(Q)) at f; M's query rows, and the filter's, are thus
        # taken at -f (one pass over the L x L maps instead of two; docs/benchmarks.md)
        m = spec_q.conj() @ spec_k.conj().transpose(-1, -2)  # M at (-f_query, f_key)
        if w_t is not None:
            m = m * w_t.float().index_select(-2, _negated_frequencies(grid, m.device))
        m = torch.fft.fftn(m.reshape(b, nh, h, w, h, w), dim=(2, 3, 4, 5))  # back to query and key token positions
        return m.real.reshape(b, nh, n, n) / n**2

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor,
        grid: tuple[int, int],
        emb: torch.Tensor | None = None,
        w_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``w_t``: this attention's NBP-Filter output when already computed (``SSFormer`` runs all filters at once);
        otherwise the filter is computed from ``emb``."""
        if self.nbp is not None and w_t is None:
            w_t = self.nbp(emb, grid)
        q = self._heads(self.to_q(self.norm_q(x_q)))
        kv = self.norm_kv(x_kv)
        k, v = self._heads(self.to_k(kv)), self._heads(self.to_v(kv))
        attn = (self.affinity(q, k, grid, w_t) * q.shape[-1] ** -0.5).softmax(dim=-1).to(v.dtype)
        out = (attn @ v).transpose(1, 2).reshape(x_q.shape)
        return x_q + self.proj(out)


class MLP(nn.Module):
    """Pre-norm two-layer MLP refinement with a residual connection."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class SSFormerBlock(nn.Module):
    """One SS-Former block: noise embedding into the condition (c -> c^1), then c^1 back into the noise (e -> e^1)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        emb_dim: int,
        use_filter: bool,
        filter_width: int,
        filter_blocks: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.noise_to_cond = FourierCrossAttention(dim, heads, emb_dim, use_filter, filter_width, filter_blocks)
        self.cond_mlp = MLP(dim, mlp_ratio)
        self.cond_to_noise = FourierCrossAttention(dim, heads, emb_dim, use_filter, filter_width, filter_blocks)
        self.noise_mlp = MLP(dim, mlp_ratio)

    def forward(
        self,
        c: torch.Tensor,
        e: torch.Tensor,
        grid: tuple[int, int],
        emb: torch.Tensor,
        filters: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = self.cond_mlp(self.noise_to_cond(c, e, grid, emb, filters[0]))
        e1 = self.noise_mlp(self.cond_to_noise(e, c1, grid, emb, filters[1]))
        return c1, e1


class SSFormer(nn.Module):
    """N SS-Former blocks over patchified, linearly projected c^0 and e; returns the fused diffusion embedding."""

    def __init__(
        self,
        cond_channels: int,
        noise_channels: int,
        emb_dim: int,
        dim: int = 256,
        depth: int = 4,
        heads: int = 8,
        patch_size: int = 1,
        use_filter: bool = True,
        filter_width: int = 16,
        filter_blocks: int = 6,
        mlp_ratio: float = 4.0,
        filter_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.filter_checkpointing = filter_checkpointing
        self.embed_c = nn.Conv2d(cond_channels, dim, patch_size, stride=patch_size)  # patchify + linear projection
        self.embed_e = nn.Conv2d(noise_channels, dim, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(
            [
                SSFormerBlock(dim, heads, emb_dim, use_filter, filter_width, filter_blocks, mlp_ratio)
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim)
        self.unembed = nn.ConvTranspose2d(dim, noise_channels, patch_size, stride=patch_size)

    def forward(self, c0: torch.Tensor, e: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        tc, te = self.embed_c(c0), self.embed_e(e)
        b, d, h, w = te.shape
        tc, te = tc.flatten(2).transpose(1, 2), te.flatten(2).transpose(1, 2)
        filters = self.filters(emb, (h, w))
        for i, blk in enumerate(self.blocks):
            tc, te = blk(tc, te, (h, w), emb, (filters[2 * i], filters[2 * i + 1]))
        return e + self.unembed(self.norm(te).transpose(1, 2).reshape(b, d, h, w))

    def filters(self, emb: torch.Tensor, grid: tuple[int, int]) -> list[torch.Tensor | None]:
        """The 2N NBP-Filter outputs (two per block), computed as one grouped stack; ``None`` without filters."""
        nbps = [a.nbp for blk in self.blocks for a in (blk.noise_to_cond, blk.cond_to_noise)]
        if any(f is None for f in nbps):
            return [None] * len(nbps)
        return nbp_filters(nbps, emb, grid, self.filter_checkpointing and self.training)
