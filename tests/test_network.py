"""Unit tests of the MedSegDiff-V2 network."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import pytest
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceLoss
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from tiny_config import TINY_NET

from scripts.networks import PRESETS, FourierCrossAttention, MedSegDiffV2, NBPFilter
from scripts.networks.medsegdiff_v2 import Architecture, architecture

TINY = TINY_NET


def tiny(in_channels: int = 1, out_channels: int = 1, **kw) -> MedSegDiffV2:
    return MedSegDiffV2(in_channels, out_channels, **{**TINY, **kw})


@pytest.mark.parametrize("in_ch", [1, 3])
@pytest.mark.parametrize("out_ch", [1, 3])
@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_output_shapes(in_ch: int, out_ch: int, size: tuple[int, int]) -> None:
    net = tiny(in_ch, out_ch)
    image, x = torch.randn(2, in_ch, *size), torch.randn(2, out_ch, *size)
    eps = net(x, torch.tensor([1, 500]), image=image)
    cond = net.condition(image)
    assert eps.shape == x.shape
    assert cond.anchor_logits.shape == (2, out_ch, *size)
    assert cond.feature.shape == (2, 8, *size)
    assert cond.embedding.shape == (2, 16, size[0] // 4, size[1] // 4)


def test_every_parameter_gets_a_gradient_from_the_combined_loss() -> None:
    torch.manual_seed(0)
    net = tiny(1, 2)
    image, mask = torch.randn(2, 1, 32, 32), (torch.rand(2, 2, 32, 32) > 0.5).float()
    noise = torch.randn_like(mask)
    cond = net.condition(image)
    eps = net(mask * 2 - 1 + noise, torch.tensor([5, 10]), condition=cond)
    anchor = DiceLoss(sigmoid=True)(
        cond.anchor_logits, mask
    ) + 10 * torch.nn.functional.binary_cross_entropy_with_logits(cond.anchor_logits, mask)
    (torch.nn.functional.mse_loss(eps, noise) + anchor).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    zero = [n for n, p in net.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = tiny(1, 1, gradient_checkpointing=ckpt)
        torch.manual_seed(1)
        out = net(torch.randn(2, 1, 32, 32), torch.tensor([3, 9]), image=torch.randn(2, 1, 32, 32))
        out.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def _names(net: MedSegDiffV2) -> set[str]:
    return {n for n, _ in net.named_parameters()}


def test_ablation_switches_change_the_parameter_set() -> None:
    full = _names(tiny(anchor="usa", semantic="ssformer_nbp"))
    no_anchor = _names(tiny(anchor="none", semantic="ssformer_nbp"))
    sa = _names(tiny(anchor="sa", semantic="ssformer_nbp"))
    no_filter = _names(tiny(anchor="usa", semantic="ssformer"))
    no_semantic = _names(tiny(anchor="usa", semantic="none"))
    assert full - sa == {"anchor_condition.sigma_raw"}  # U-SA adds only the learnable Gaussian to SA
    assert sa - no_anchor == {"anchor_condition.proj.weight", "anchor_condition.proj.bias"}
    assert not any(".nbp." in n for n in no_filter) and any(".nbp." in n for n in full)
    assert full - no_filter == {n for n in full if ".nbp." in n}
    assert not any(n.startswith("semantic_condition.") for n in no_semantic)
    assert no_semantic < no_filter < full
    with pytest.raises(ValueError, match="anchor"):
        tiny(anchor="cbam")
    with pytest.raises(ValueError, match="semantic"):
        tiny(semantic="transformer")


def test_cached_condition_equals_uncached() -> None:
    torch.manual_seed(0)
    net = tiny(3, 2).eval()
    image, x = torch.randn(2, 3, 32, 32), torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        uncached = net(x, torch.tensor([3, 40]), image=image)
        cond = net.condition(image)
        cached = net(x, torch.tensor([3, 40]), condition=cond)
        # ensemble of 3 members per image run as one batch with the condition computed once
        members = net(
            x.repeat_interleave(3, 0), torch.tensor([3, 3, 3, 40, 40, 40]), condition=cond.repeat_interleave(3)
        )
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    torch.testing.assert_close(members[::3], uncached, rtol=1e-5, atol=1e-5)


def test_determinism_under_a_seed() -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        net = tiny(1, 1)
        outs.append(net(torch.randn(1, 1, 32, 32), 7, image=torch.randn(1, 1, 32, 32)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "timesteps", [7, torch.tensor([7, 7]), torch.tensor([7.0]), torch.tensor(7), torch.tensor([7.0, 7.0])]
)
def test_timestep_forms(timesteps) -> None:
    torch.manual_seed(0)
    net = tiny(1, 1).eval()
    image, x = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = net(x, torch.tensor([7, 7]), image=image)
        torch.testing.assert_close(net(x, timesteps, image=image), ref)


def test_paper_preset_parameter_count() -> None:
    net = MedSegDiffV2(3, 1, preset="paper")
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 46e6) / 46e6 < 0.15, n
    assert net.size_divisor == 16 and 256 % net.size_divisor == 0
    assert set(PRESETS) >= {"paper", "small"}


def test_clear_errors_for_bad_inputs() -> None:
    net = tiny(1, 1)
    with pytest.raises(ValueError, match="not divisible by the network's total stride 4"):
        net(torch.randn(1, 1, 30, 32), 1, image=torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="image has 3 channels, the network expects 1"):
        net(torch.randn(1, 1, 32, 32), 1, image=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="noisy mask.*2 channels"):
        net(torch.randn(1, 2, 32, 32), 1, image=torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="2D network.*3D volume"):
        net(torch.randn(1, 1, 32, 32, 8), 1, image=torch.randn(1, 1, 32, 32, 8))
    with pytest.raises(ValueError, match="2D network"):
        net.condition(torch.randn(1, 1, 32, 32, 8))
    with pytest.raises(ValueError, match="timesteps has 3 values for a batch of 2"):
        net(torch.randn(2, 1, 32, 32), torch.tensor([1, 2, 3]), image=torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="repeat_interleave"):
        net(torch.randn(4, 1, 32, 32), 1, condition=net.condition(torch.randn(2, 1, 32, 32)))
    with pytest.raises(ValueError, match="Unknown preset"):
        MedSegDiffV2(1, 1, preset="huge")
    with pytest.raises(TypeError, match=r"unknown arguments \['channel'\]"):
        MedSegDiffV2(1, 1, preset="small", channel=(8, 16))
    with pytest.raises(ValueError, match="Without a preset these arguments are required"):
        MedSegDiffV2(1, 1, preset=None, channels=(8, 16))


def test_preset_sizes_are_data_and_explicit_sizes_override_them() -> None:
    small = MedSegDiffV2(3, 1, preset="small", former_dim=32)
    assert small.semantic_condition is not None
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in MedSegDiffV2(3, 1, "small").parameters())
    assert architecture("small", former_dim=32) == replace(PRESETS["small"], former_dim=32)
    sizes = {k: v for k, v in TINY_NET.items() if k in {f.name for f in fields(Architecture)}}
    assert architecture(None, **sizes).channels == tuple(TINY_NET["channels"])  # lists from a config become tuples


def test_timestep_embedding_is_ddpm_sinusoids_also_for_fractional_timesteps() -> None:
    """MONAI's get_timestep_embedding, as the network uses it: cos | sin of t * 10000^(-i / half), zero-padded."""
    t = torch.tensor([0.0, 1.5, 999.0])
    emb = get_timestep_embedding(t, 7)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(3, dtype=torch.float32) / 3)
    args = t[:, None] * freqs[None]
    assert torch.equal(emb, torch.cat([args.cos(), args.sin(), torch.zeros(3, 1)], dim=-1))


def test_fourier_affinity_without_filter_is_the_spatial_affinity() -> None:
    """Design check of the FFT round trip: IFFT_q(FFT_k(F(Q) F(K)^H)) / L == Q K^T."""
    torch.manual_seed(0)
    attn = FourierCrossAttention(dim=8, heads=2, emb_dim=4, use_filter=False, filter_width=4, filter_blocks=1)
    q, k = torch.randn(2, 2, 12, 4), torch.randn(2, 2, 12, 4)
    torch.testing.assert_close(attn.affinity(q, k, (3, 4)), q @ k.transpose(-1, -2), rtol=1e-4, atol=1e-4)


def test_filtered_fourier_affinity_matches_explicit_dft_matrices() -> None:
    """With a filter W: Re(U^-1 ((U Q)(U K)^H * W) U) / L, U the 2D DFT matrix of the token grid, whatever order
    the implementation runs its FFTs in."""
    torch.manual_seed(0)
    attn = FourierCrossAttention(dim=8, heads=2, emb_dim=4, use_filter=False, filter_width=4, filter_blocks=1)
    h, w, n = 3, 4, 12
    q, k, w_t = torch.randn(2, 2, n, 4), torch.randn(2, 2, n, 4), torch.rand(2, 2, n, n)
    u = torch.fft.fft2(torch.eye(n).reshape(n, h, w), dim=(1, 2)).reshape(n, n).T  # column j: DFT of token j
    m = ((u @ q.to(u.dtype)) @ (u @ k.to(u.dtype)).conj().transpose(-1, -2)) * w_t
    expected = (torch.linalg.inv(u) @ m @ u).real / n
    torch.testing.assert_close(attn.affinity(q, k, (h, w), w_t), expected, rtol=1e-4, atol=1e-4)


def test_nbp_filter_depends_on_t_and_is_shared_within_a_step() -> None:
    torch.manual_seed(0)
    nbp = NBPFilter(emb_dim=8, heads=2, width=4, num_blocks=6)
    assert len(nbp.blocks) == 6
    emb = torch.randn(2, 8)
    w = nbp(torch.stack([emb[0], emb[1], emb[0]]), (3, 4))
    assert w.shape == (3, 2, 12, 12) and (w > 0).all() and (w < 1).all()
    torch.testing.assert_close(w[0], w[2])
    assert not torch.allclose(w[0], w[1])


def test_bundle_builds_the_network_from_config(bundle_root) -> None:
    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "scripts.networks.MedSegDiffV2",
                "in_channels": 3,
                "out_channels": 2,
                "preset": "small",
                "anchor": "usa",
                "semantic": "ssformer_nbp",
            }
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MedSegDiffV2) and net.in_channels == 3 and net.out_channels == 2
    out = net(torch.randn(1, 2, 32, 32), 3, image=torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 2, 32, 32)


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_patch_size_key_sets_the_token_grid_and_null_keeps_the_presets(bundle_root, config: str) -> None:
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / config))
    parser.update({"preset": "small", "patch_size": 2})
    coarse = parser.get_parsed_content("network_def", lazy=False)
    parser.update({"patch_size": None})
    preset = parser.get_parsed_content("network_def", lazy=False)
    assert coarse.semantic_condition.embed_c.kernel_size == (2, 2) and coarse.size_divisor == 2 * preset.size_divisor
    assert preset.semantic_condition.embed_c.kernel_size == (1, 1)  # the small preset's (and the paper's) 1x1 tokens
    image = torch.randn(1, 3, 32, 32)
    assert coarse(torch.randn(1, 1, 32, 32), 3, image=image).shape == (1, 1, 32, 32)
