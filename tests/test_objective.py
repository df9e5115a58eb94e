"""The diffusion objective and its diagnostics: prediction types, min-SNR weights, timestep groups, the fused
NBP-Filters, anchor-initialised sampling, the image-reliance metric, and the new keys through monai.bundle."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor, list_data_collate
from monai.metrics import DiceMetric
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from tiny_config import TINY_NET
from torch import nn

from scripts.diffusion import training
from scripts.diffusion.ema import PowerMomentum
from scripts.diffusion.sampling import FLIPS, DiffusionSegmentationInferer
from scripts.diffusion.schedulers import RespacedDDPMScheduler
from scripts.diffusion.training import (
    AnchorWarmup,
    MedSegDiffLoss,
    SegDiffusionTrainingInferer,
    min_snr_weight,
    predicted_x0,
    smooth_field,
    stratified_timesteps,
)
from scripts.evaluation.diagnostics import DonorDataset, ImageRelianceHandler, donor_indices, loss_terms
from scripts.networks import MedSegDiffV2, NBPFilter
from scripts.networks.nbp_filter import nbp_filters
from scripts.networks.unet import ConditionOutput

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class OracleNet(nn.Module):
    """Knows the true mask of each image (channel 0 > 0.5) and returns the exact eps / x0 / v for any x_t; with
    ``use_condition=False`` it ignores the image and always denoises towards a fixed centred square."""

    out_channels = 1

    def __init__(self, prediction_type: str, alphas_cumprod: torch.Tensor, use_condition: bool = True) -> None:
        super().__init__()
        self.prediction_type, self.abar, self.use_condition = prediction_type, alphas_cumprod, use_condition

    def condition(self, image: torch.Tensor) -> ConditionOutput:
        mask = (image[:, :1] > 0.5).float()
        return ConditionOutput(mask * 20 - 10, mask, mask)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: ConditionOutput) -> torch.Tensor:
        if self.use_condition:
            x0 = condition.feature * 2 - 1
        else:
            x0 = -torch.ones_like(x)
            x0[..., 4:12, 4:12] = 1
        abar = self.abar[torch.as_tensor(t).long().reshape(-1)].view(-1, 1, 1, 1)  # one t, or one per case
        eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return x0
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def masks_and_images(n: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """n images whose channel 0 holds a distinct, non-overlapping square (their truth)."""
    image = torch.zeros(n, 3, size, size)
    for i in range(n):
        r, c = divmod(i, 2)
        image[i, 0, r * 8 : r * 8 + 6, c * 8 : c * 8 + 6] = 1
    return image, (image[:, :1] > 0.5).float()


def scheduler(kind: str, prediction_type: str):
    cls = {"ddpm": RespacedDDPMScheduler, "ddim": DDIMScheduler}[kind]
    return cls(num_train_timesteps=1000, schedule="linear_beta", prediction_type=prediction_type)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_an_oracle_network_lets_the_sampler_recover_x0(kind: str, prediction_type: str) -> None:
    sched = scheduler(kind, prediction_type)
    net = OracleNet(prediction_type, sched.alphas_cumprod)
    image, truth = masks_and_images()
    inferer = DiffusionSegmentationInferer(sched, num_inference_steps=10, ensemble_size=3, fusion="mean", seed=0)
    torch.testing.assert_close(inferer(image, net), truth)


def test_flipped_members_see_flipped_images_and_are_flipped_back() -> None:
    """flip_members: member j's condition is the Condition Model's output for the image flipped by FLIPS[j % 4], and
    its mask comes back in the image's orientation, so the oracle's members all equal the truth (the squares are off
    centre: a member left flipped would not); the anchor of the reliance diagnostic is the unflipped image's."""
    sched = scheduler("ddpm", "sample")
    net = OracleNet("sample", sched.alphas_cumprod)
    image, truth = masks_and_images()
    assert all(not torch.equal(truth.flip(f), truth) for f in FLIPS[1:])
    inferer = DiffusionSegmentationInferer(
        sched, num_inference_steps=5, ensemble_size=6, fusion=lambda s: s, seed=0, flip_members=True
    )
    assert inferer.member_flips() == [(), (-1,), (-2,), (-2, -1), (), (-1,)]
    members = inferer.member_condition(image, net).feature.reshape(4, 6, 1, 16, 16)
    for j, flip in enumerate(inferer.member_flips()):
        torch.testing.assert_close(members[:, j], truth.flip(flip) if flip else truth)
    torch.testing.assert_close(inferer(image, net), truth[:, None].expand(4, 6, 1, 16, 16))
    out = inferer(image, net, donor=image.roll(1, 0))
    torch.testing.assert_close(out["anchor"], truth)
    torch.testing.assert_close(out["pred_swapped"], truth.roll(1, 0)[:, None].expand(4, 6, 1, 16, 16))


@pytest.mark.parametrize("flip_members", [False, True])
def test_reliance_sampling_takes_a_collated_batch_of_meta_tensors(flip_members: bool) -> None:
    """A validation batch is a MetaTensor whose cases carry different metadata; the reliance path must not index it
    per member (MONAI refuses to slice such a batch)."""
    sched = scheduler("ddpm", "sample")
    image, truth = masks_and_images()
    items = [{"image": MetaTensor(image[i], meta={"filename_or_obj": f"case{i}.png"})} for i in range(4)]
    batch = list_data_collate(items)["image"]
    inferer = DiffusionSegmentationInferer(
        sched, num_inference_steps=3, ensemble_size=3, fusion="mean", seed=0, flip_members=flip_members
    )
    out = inferer(batch, OracleNet("sample", sched.alphas_cumprod), donor=image.roll(1, 0))
    torch.testing.assert_close(torch.as_tensor(out["pred"]), truth)
    torch.testing.assert_close(torch.as_tensor(out["anchor"]), truth)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_training_target_matches_the_scheduler_convention(prediction_type: str) -> None:
    """The inferer's target is what the oracle returns: the loss of the oracle is 0 for every prediction type."""
    sched = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", prediction_type=prediction_type)
    oracle = OracleNet(prediction_type, sched.alphas_cumprod)
    image, truth = masks_and_images()

    class Wrapped(nn.Module):  # the training call: returns (prediction, anchor logits)
        def forward(self, x, timesteps, image, with_anchor):
            cond = oracle.condition(image)
            return oracle(x, timesteps, cond), cond.anchor_logits

    pred = SegDiffusionTrainingInferer(sched)(
        image, Wrapped(), truth, torch.randn_like(truth), torch.tensor([3, 250, 600, 999])
    )
    torch.testing.assert_close(pred["prediction"], pred["target"], rtol=1e-4, atol=1e-4)


class CountingOracle(nn.Module):
    """The training call of :class:`OracleNet` (prediction, anchor logits), recording each call's x_t and t; its
    x0 is ``shift`` away from the truth, so that a recycled x_t differs from one noised from the truth."""

    def __init__(self, prediction_type: str, abar: torch.Tensor, shift: float = 0.0) -> None:
        super().__init__()
        self.oracle, self.shift, self.calls = OracleNet(prediction_type, abar), shift, []
        self.out_channels = 1

    def condition(self, image: torch.Tensor) -> ConditionOutput:
        self.calls.append(("condition", None, None))
        return self.oracle.condition(image)

    def forward(self, x, timesteps, image, with_anchor=False):
        self.calls.append(("denoiser", x.clone(), torch.as_tensor(timesteps).clone()))
        cond = self.oracle.condition(image)
        cond = ConditionOutput(cond.anchor_logits, cond.feature + self.shift, cond.embedding)
        out = self.oracle(x, timesteps, cond)
        return (out, cond.anchor_logits) if with_anchor else out


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_recycling_noises_the_models_own_x0_and_still_targets_the_truth(prediction_type: str) -> None:
    """Recycling (Fu et al.): a no-gradient call at t = T - 1 gives x0_hat; x_t is x0_hat noised to t, and the target
    is the one whose implied x0 is the true mask."""
    sched = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", prediction_type=prediction_type)
    net = CountingOracle(prediction_type, sched.alphas_cumprod, shift=0.25)  # x0_hat = truth's x0 + 0.5
    image, truth = masks_and_images()
    noise, t = torch.randn_like(truth), torch.tensor([3, 250, 600, 900])
    pred = SegDiffusionTrainingInferer(sched, recycling=1.0)(image, net, truth, noise, t)
    (_, x_last, t_last), (_, x_t, t_used) = net.calls
    assert (t_last == 999).all() and torch.equal(t_used, t)
    x0_hat = (truth * 2 - 1 + 0.5).clamp(-1, 1)  # the shifted oracle's estimate, clipped
    torch.testing.assert_close(x_t, sched.add_noise(x0_hat, noise, t))
    implied = predicted_x0(sched, pred["target"], x_t, t)  # the target leads back to the true mask
    torch.testing.assert_close(implied, truth * 2 - 1, rtol=1e-3, atol=1e-3)
    plain = SegDiffusionTrainingInferer(sched, recycling=0.0)(
        image, CountingOracle(prediction_type, sched.alphas_cumprod), truth, noise, t
    )
    torch.testing.assert_close(
        plain["target"],
        OracleNet(prediction_type, sched.alphas_cumprod)(
            sched.add_noise(truth * 2 - 1, noise, t),
            t,
            OracleNet(prediction_type, sched.alphas_cumprod).condition(image),
        ),
        rtol=1e-4,
        atol=1e-4,
    )


def test_smooth_field_is_smooth_and_bounded_per_case() -> None:
    torch.manual_seed(0)
    like = torch.zeros(64, 2, 64, 64)
    field = smooth_field(like, 4.0)
    assert field.shape == like.shape and field.dtype == like.dtype
    per_case = field.flatten(1).std(1)
    assert per_case.max() < 4.0 and per_case.min() < 1.0 < per_case.max()  # strengths drawn in [0, 4]
    step = (field[..., 1:] - field[..., :-1]).abs().mean()
    assert step < 0.3 * field.abs().mean()  # neighbours nearly agree: blobs (independent pixels: about 1.4)
    assert torch.equal(smooth_field(like, 0.0), torch.zeros_like(like))


def test_anchor_corruption_reaches_only_the_concatenated_anchor() -> None:
    """The offset changes the denoiser's anchor input, not the returned anchor logits (eq. 3's anchor term) and not
    a network without ``concat_anchor``; the inferer draws it only when asked, so the default keeps its random
    stream."""
    torch.manual_seed(0)
    image, x = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32) * 2 - 1
    offset = torch.full_like(x, 3.0)
    for concat in (True, False):
        net = MedSegDiffV2(3, 1, **{**TINY_NET, "concat_anchor": concat}).eval()
        with torch.no_grad():
            plain, anchor = net(x, 10, image=image, with_anchor=True)
            moved, anchor_moved = net(x, 10, image=image, with_anchor=True, anchor_offset=offset)
        assert torch.equal(anchor, anchor_moved)
        assert not torch.allclose(plain, moved) if concat else torch.equal(plain, moved)

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample")
    net = MedSegDiffV2(3, 1, **TINY_NET).eval()
    truth, t = (torch.rand(2, 1, 32, 32) > 0.5).float(), torch.tensor([100, 900])
    noise = torch.randn_like(truth)

    def run(corruption: float) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        with torch.no_grad():
            out = SegDiffusionTrainingInferer(sched, anchor_corruption=corruption)(image, net, truth, noise, t)
        out["next"] = torch.rand(())  # the random stream after the call
        return out

    off, on = run(0.0), run(4.0)
    assert torch.equal(off["anchor"], on["anchor"]) and torch.equal(off["target"], on["target"])
    assert not torch.allclose(off["prediction"], on["prediction"])
    assert not torch.equal(off["next"], on["next"])  # the field consumed random numbers; the default did not
    with pytest.raises(ValueError, match="anchor_corruption"):
        SegDiffusionTrainingInferer(sched, anchor_corruption=-1.0)


class SelfConditionedOracle(OracleNet):
    """:class:`OracleNet` declared ``self_condition``: records the x0 estimate each denoiser call gets."""

    self_condition = True

    def __init__(self, prediction_type: str, alphas_cumprod: torch.Tensor) -> None:
        super().__init__(prediction_type, alphas_cumprod)
        self.received: list[torch.Tensor | None] = []

    def forward(self, x, t, condition=None, image=None, with_anchor=False, x_self_cond=None):
        self.received.append(None if x_self_cond is None else x_self_cond.clone())
        condition = condition if condition is not None else self.condition(image)
        out = super().forward(x, t, condition)
        return (out, condition.anchor_logits) if with_anchor else out


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_self_conditioning_trains_on_the_models_own_x0_estimate(
    prediction_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Self-conditioning (Chen et al.): a no-gradient call estimates x0 from x_t; the trained call gets that estimate
    as its extra input; the target is unchanged."""
    monkeypatch.setattr(training, "SELF_CONDITION_SHARE", 1.0)
    sched = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", prediction_type=prediction_type)
    net = SelfConditionedOracle(prediction_type, sched.alphas_cumprod)
    image, truth = masks_and_images()
    noise, t = torch.randn_like(truth), torch.tensor([3, 250, 600, 900])
    pred = SegDiffusionTrainingInferer(sched)(image, net, truth, noise, t)
    first, second = net.received
    assert first is None  # the estimate is made without an estimate
    torch.testing.assert_close(second, truth * 2 - 1, rtol=1e-3, atol=1e-3)  # the oracle's x0 estimate
    torch.testing.assert_close(pred["prediction"], pred["target"], rtol=1e-3, atol=1e-3)
    monkeypatch.setattr(training, "SELF_CONDITION_SHARE", 0.0)
    net.received.clear()
    SegDiffusionTrainingInferer(sched)(image, net, truth, noise, t)
    assert net.received == [None]  # one call, with zeros in place of the estimate


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_sampling_feeds_each_step_the_previous_x0_estimate(kind: str) -> None:
    sched = scheduler(kind, "epsilon")
    net = SelfConditionedOracle("epsilon", sched.alphas_cumprod)
    image, truth = masks_and_images()
    inferer = DiffusionSegmentationInferer(sched, num_inference_steps=4, ensemble_size=2, fusion="mean", seed=0)
    torch.testing.assert_close(torch.as_tensor(inferer(image, net)), truth)
    assert len(net.received) == 4 and net.received[0] is None
    for x0 in net.received[1:]:  # the oracle's estimate of the step before, per member
        torch.testing.assert_close(x0, (truth * 2 - 1).repeat_interleave(2, 0), rtol=1e-3, atol=1e-3)


def test_self_condition_network_reads_its_extra_input() -> None:
    torch.manual_seed(0)
    net = MedSegDiffV2(3, 2, **{**TINY_NET, "concat_anchor": True}, self_condition=True).eval()
    assert net.stem.in_channels == 2 * 3  # x_t, the anchor probabilities, the x0 estimate
    image, x, t = torch.randn(1, 3, 32, 32), torch.randn(1, 2, 32, 32), torch.tensor([500])
    with torch.no_grad():
        plain, zeros = net(x, t, image=image), net(x, t, image=image, x_self_cond=torch.zeros_like(x))
        given = net(x, t, image=image, x_self_cond=torch.ones_like(x))
    torch.testing.assert_close(plain, zeros)
    assert not torch.allclose(plain, given)


def test_concat_image_network_reads_the_image_its_condition_carries() -> None:
    """``concat_image``: the image rides in the cached condition (repeated per member, flipped with its member) and
    reaches the denoiser's input; without the image in the condition the network says so."""
    torch.manual_seed(0)
    net = MedSegDiffV2(3, 2, **TINY_NET, concat_image=True).eval()
    assert net.stem.in_channels == 2 * 2 + 3  # x_t, the anchor probabilities, the image
    image, x, t = torch.rand(2, 3, 32, 32), torch.randn(2, 2, 32, 32), torch.tensor([500])
    with torch.no_grad():
        cond = net.condition(image)
        assert torch.equal(cond.image, image)
        plain = net(x, t, condition=cond)
        torch.testing.assert_close(plain, net(x, t, image=image))
        other = net(x, t, condition=cond._replace(image=torch.rand_like(image)))  # the same anchor and features
        assert not torch.allclose(plain, other)
        with pytest.raises(ValueError, match="concat_image"):
            net(x, t, condition=cond._replace(image=None))
        flipped = DiffusionSegmentationInferer(DDIMScheduler(), ensemble_size=2, flip_members=True)
        members = flipped.member_condition(image, net)
    assert torch.equal(members.image[0::2], image) and torch.equal(members.image[1::2], image.flip(FLIPS[1]))
    assert ConditionOutput(image, image, image).repeat_interleave(2).image is None  # nothing kept, nothing repeated


def test_anchor_warmup_trains_the_condition_model_alone_first() -> None:
    """During the warm-up the denoiser is never called and the loss is the anchor term at every timestep."""
    sched = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", prediction_type="sample")
    net = CountingOracle("sample", sched.alphas_cumprod)
    inferer = SegDiffusionTrainingInferer(sched)
    warmup = AnchorWarmup(inferer, iterations=2)
    engine = Engine(lambda e, b: None)
    warmup.attach(engine)
    image, truth = masks_and_images()
    t = torch.tensor([1, 2, 3, 4])  # no t is 0 mod alpha: outside the warm-up the anchor term would be gated off
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(inferer.warmup))
    engine.run([0, 1, 2], max_epochs=1)
    assert seen == [True, True, False]
    inferer.warmup = True
    pred = inferer(image, net, truth, torch.randn_like(truth), t)
    assert [c[0] for c in net.calls] == ["condition"] and "prediction" not in pred
    loss = MedSegDiffLoss(alpha=5, beta=10.0)(pred, truth)
    assert pred["loss_n"].abs().sum() == 0 and (pred["loss_anchor"] > 0).all() and loss > 0


def test_anchor_warmup_learning_rate_holds_during_the_warmup_only() -> None:
    """The warm-up runs at its own learning rate, joint training at the optimizer's (the configured learning_rate)."""
    inferer = SegDiffusionTrainingInferer(DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta"))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=2e-4)
    warmup = AnchorWarmup(inferer, iterations=2, optimizer=optimizer, learning_rate=2e-3)
    engine = Engine(lambda e, b: None)
    warmup.attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(optimizer.param_groups[0]["lr"]))
    engine.run([0, 1, 2, 3], max_epochs=1)
    assert seen == [2e-3, 2e-3, 2e-4, 2e-4]
    with pytest.raises(ValueError, match="optimizer"):
        AnchorWarmup(inferer, iterations=2, learning_rate=2e-3)
    plain = AnchorWarmup(inferer, iterations=2, optimizer=optimizer)  # no warm-up rate: the optimizer's throughout
    plain(engine)
    assert optimizer.param_groups[0]["lr"] == 2e-4


def test_loss_gate_alpha_one_applies_the_anchor_term_at_every_step_and_bad_values_are_refused() -> None:
    pred = {
        "prediction": torch.zeros(2, 1, 4, 4),
        "target": torch.zeros(2, 1, 4, 4),
        "weight": torch.ones(2),
        "anchor": torch.zeros(2, 1, 4, 4),
        "timesteps": torch.tensor([5, 6]),
    }
    MedSegDiffLoss(alpha=1, beta=10.0)(pred, torch.ones(2, 1, 4, 4))
    assert (pred["loss_anchor"] > 0).all()
    for alpha in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="loss#alpha"):
            MedSegDiffLoss(alpha=alpha)
    for beta in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="loss#beta"):
            MedSegDiffLoss(beta=beta)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_x0_loss_scores_the_denoisers_own_x0_estimate_as_a_segmentation(prediction_type: str) -> None:
    """x0_weight adds x0_weight (Dice + beta BCE) of (x0 + 1) / 2, the x0 that the prediction implies for every
    prediction_type, with a gradient to the network; 0 leaves eq. 3 as it was; bad weights are refused."""
    sched = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", prediction_type=prediction_type)
    torch.manual_seed(0)
    net = MedSegDiffV2(3, 1, **TINY_NET)
    image, truth = torch.randn(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    t, noise = torch.tensor([100, 700]), torch.randn(2, 1, 16, 16)
    pred = SegDiffusionTrainingInferer(sched)(image, net, truth, noise, t)
    x_t = sched.add_noise(original_samples=truth * 2 - 1, noise=noise, timesteps=t)
    torch.testing.assert_close(pred["x0"], predicted_x0(sched, pred["prediction"], x_t, t))
    plain = MedSegDiffLoss(alpha=5, beta=10.0)({**pred}, truth)
    weighted = {**pred}
    loss = MedSegDiffLoss(alpha=5, beta=10.0, x0_weight=0.5)(weighted, truth)
    p = ((pred["x0"] + 1) / 2).clamp(1e-4, 1 - 1e-4)
    inter = (p * truth).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1e-5) / (p.flatten(1).sum(1) + truth.flatten(1).sum(1) + 1e-5)
    bce = -(truth * p.log() + (1 - truth) * (1 - p).log()).flatten(1).mean(1)
    torch.testing.assert_close(weighted["loss_x0"], 0.5 * (dice + 10.0 * bce).detach())
    torch.testing.assert_close(loss, plain + weighted["loss_x0"].mean())
    terms = loss_terms({"loss": loss, "pred": weighted})
    assert terms["loss_x0"] == pytest.approx(weighted["loss_x0"].mean().item()) and "loss_x0" not in loss_terms(
        {"loss": plain, "pred": {k: v for k, v in weighted.items() if k != "loss_x0"}}
    )
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="x0_loss_weight"):
            MedSegDiffLoss(x0_weight=bad)


def test_min_snr_weights_follow_hang_et_al() -> None:
    t = torch.tensor([0, 100, 500, 999])
    for kind in PREDICTION_TYPES:
        sched = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", prediction_type=kind)
        abar = sched.alphas_cumprod[t]
        snr = abar / (1 - abar)
        want = {
            "epsilon": snr.clamp(max=5) / snr,
            "sample": snr.clamp(max=5),
            "v_prediction": snr.clamp(max=5) / (snr + 1),
        }
        torch.testing.assert_close(min_snr_weight(sched, t, 5.0), want[kind].float())
        assert torch.equal(min_snr_weight(sched, t, None), torch.ones(4))


def test_loss_reports_its_two_terms() -> None:
    pred = {
        "prediction": torch.zeros(2, 1, 4, 4),
        "target": torch.ones(2, 1, 4, 4),
        "weight": torch.tensor([1.0, 0.5]),
        "anchor": torch.zeros(2, 1, 4, 4),
        "timesteps": torch.tensor([5, 6]),  # only the first case is gated in (t mod 5 == 0)
    }
    loss = MedSegDiffLoss(alpha=5, beta=10.0)(pred, torch.ones(2, 1, 4, 4))
    torch.testing.assert_close(pred["loss_n"], torch.tensor([1.0, 0.5]))
    assert pred["loss_anchor"][1] == 0 and pred["loss_anchor"][0] > 0
    torch.testing.assert_close(loss, (pred["loss_n"] + pred["loss_anchor"]).mean())
    terms = loss_terms(
        [
            {"loss": loss, "pred": {"loss_n": v, "loss_anchor": a}}
            for v, a in zip(pred["loss_n"], pred["loss_anchor"], strict=True)
        ]
    )
    assert terms["loss_n"] == pytest.approx(0.75) and set(terms) == {"train_loss", "loss_n", "loss_anchor"}


def test_timestep_groups_are_distinct_and_every_case_stays_uniform() -> None:
    torch.manual_seed(0)
    for groups in (1, 2, 3):
        t = stratified_timesteps(8, 1000, groups)
        assert len(torch.unique(t)) <= groups and t.min() >= 0 and t.max() < 1000
    draws = torch.stack([stratified_timesteps(6, 10, 4) for _ in range(20000)])  # G does not divide B
    for case in range(6):
        freq = torch.bincount(draws[:, case], minlength=10).float() / len(draws)
        assert (freq - 0.1).abs().max() < 0.012, freq  # uniform on {0..9}: 0.1 each (~0.002 std)
    assert len(torch.unique(stratified_timesteps(5, 1000, None))) >= 4  # None: one draw per case


def test_fused_filters_equal_the_filters_run_one_by_one_and_all_get_gradients() -> None:
    torch.manual_seed(0)
    filters = [NBPFilter(emb_dim=8, heads=2, width=4, num_blocks=6) for _ in range(4)]
    emb = torch.randn(2, 8)[torch.tensor([0, 1, 1, 0, 1])].requires_grad_()
    fused = nbp_filters(filters, emb, (3, 4))

    def one_by_one(f: NBPFilter, e: torch.Tensor) -> torch.Tensor:
        from scripts.networks.nbp_filter import frequency_coordinates

        x = frequency_coordinates((3, 4))[None].expand(len(e), -1, -1, -1)
        for blk in f.blocks:
            x = blk(x, e)
        return torch.sigmoid(f.out(x))

    for f, w in zip(filters, fused, strict=True):
        torch.testing.assert_close(w, one_by_one(f, emb), rtol=1e-5, atol=1e-6)
    sum(w.sum() for w in fused).backward()
    for f in filters:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters())
    # checkpointing recomputes the same values and gradients
    for f in filters:
        f.zero_grad()
    ckpt = nbp_filters(filters, emb, (3, 4), checkpointing=True)
    for a, b in zip(fused, ckpt, strict=True):
        torch.testing.assert_close(a, b)


def test_grouped_timesteps_give_the_per_case_outputs() -> None:
    """A batch with repeated timesteps (timestep groups) gives each case what it gets alone."""
    torch.manual_seed(0)
    net = MedSegDiffV2(3, 1, **TINY_NET).eval()
    x, image = torch.randn(4, 1, 16, 16), torch.randn(4, 3, 16, 16)
    t = torch.tensor([10, 700, 10, 700])
    batched = net(x, t, image=image)
    alone = torch.cat([net(x[i : i + 1], t[i : i + 1], image=image[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_network_switches_change_what_reaches_the_denoiser() -> None:
    torch.manual_seed(0)
    base = MedSegDiffV2(3, 2, **{**TINY_NET, "concat_anchor": False})
    assert base.stem.in_channels == 2 and base.anchor_condition.residual is None
    net = MedSegDiffV2(3, 2, **{**TINY_NET, "concat_anchor": True}, anchor_residual=True, anchor_gates="per_class")
    assert net.stem.in_channels == 4 and net.anchor_condition.proj.out_channels == 2
    assert torch.equal(net.anchor_condition.residual.weight, torch.zeros_like(net.anchor_condition.residual.weight))
    out = net(torch.randn(2, 2, 16, 16), torch.tensor([3, 4]), image=torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="anchor_gates"):
        MedSegDiffV2(3, 1, **TINY_NET, anchor_gates="both")


def test_anchor_initialised_sampling_starts_from_the_noised_anchor() -> None:
    """With start_t the chain runs only the steps below it; an oracle still lands on the truth."""
    sched = scheduler("ddpm", "sample")
    net = OracleNet("sample", sched.alphas_cumprod)
    image, truth = masks_and_images()
    calls = []
    forward = net.forward
    net.forward = lambda x, t, condition: calls.append(int(t)) or forward(x, t, condition)
    inferer = DiffusionSegmentationInferer(sched, num_inference_steps=10, ensemble_size=2, fusion="mean", start_t=500)
    torch.testing.assert_close(inferer(image, net), truth)
    assert calls and max(calls) <= 500 and len(calls) < 10


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_soft_members_are_the_final_mask_estimate_in_0_1(kind: str) -> None:
    """soft_members: each member is the denoiser's final x0 estimate mapped to [0, 1] (clipped), whose mask (> 0.5) is
    the binary member's (x0 > 0); without it the members are binary."""
    sched = scheduler(kind, "sample")
    x0 = torch.tensor([-2.0, -0.6, -0.1, 0.2, 0.8, 1.5]).repeat(16, 16)[None, None, :16, :16].expand(2, 1, 16, 16)

    class Graded(nn.Module):  # predicts the same graded x0 for any x_t
        out_channels = 1

        def condition(self, image: torch.Tensor) -> ConditionOutput:
            return ConditionOutput(image[:, :1], image[:, :1], image[:, :1])

        def forward(self, x: torch.Tensor, t: torch.Tensor, condition: ConditionOutput) -> torch.Tensor:
            return x0[:1].expand_as(x)

    image = torch.zeros(2, 3, 16, 16)
    soft = DiffusionSegmentationInferer(sched, num_inference_steps=5, ensemble_size=3, fusion=lambda s: s, seed=0)
    members = soft(image, Graded())
    assert members.shape == (2, 3, 1, 16, 16)
    torch.testing.assert_close(members, ((x0.clamp(-1, 1) + 1) / 2)[:, None].expand_as(members))
    binary = DiffusionSegmentationInferer(
        sched, num_inference_steps=5, ensemble_size=3, fusion=lambda s: s, seed=0, soft_members=False
    )
    torch.testing.assert_close(binary(image, Graded()), (members > 0.5).float())


def reliance(net: nn.Module, sched) -> float:
    image, truth = masks_and_images()
    dataset = DonorDataset([{"image": im} for im in image], seed=0)
    donor = torch.stack([dataset[i]["donor"] for i in range(len(dataset))])
    inferer = DiffusionSegmentationInferer(sched, num_inference_steps=10, ensemble_size=2, fusion="mean")
    out = inferer(image, net, donor=donor)
    scores = {}
    for key in ("pred", "pred_swapped", "anchor"):
        metric = DiceMetric(include_background=True, ignore_empty=False)
        metric((out[key] > 0.5).float(), truth)
        scores[key] = metric.aggregate().item()
    assert scores["anchor"] == pytest.approx(1.0)
    return scores["pred"] - scores["pred_swapped"]


def test_image_reliance_is_zero_without_the_condition_and_high_for_an_oracle() -> None:
    sched = scheduler("ddpm", "epsilon")
    assert reliance(OracleNet("epsilon", sched.alphas_cumprod, use_condition=False), sched) == pytest.approx(0.0)
    assert reliance(OracleNet("epsilon", sched.alphas_cumprod), sched) > 0.5


def test_donors_are_other_cases() -> None:
    for n in (2, 3, 10):
        donors = donor_indices(n, seed=1)
        assert sorted(donors) == list(range(n)) and all(d != i for i, d in enumerate(donors))
    with pytest.raises(ValueError, match="at least 2"):
        donor_indices(1)


def test_image_reliance_handler_subtracts_the_swapped_dice() -> None:
    class State:
        metrics = {"val_mean_dice": 0.9, "val_swapped_dice": 0.3}

    class Engine:
        state = State()

    ImageRelianceHandler()(Engine())
    assert Engine.state.metrics["val_image_reliance"] == pytest.approx(0.6)


def test_ema_momentum_grows_its_window_with_the_run() -> None:
    m = PowerMomentum(power=2 / 3, floor=1e-4)
    assert m(1) == 1.0 and m(10**7) == 1e-4
    assert m(700) == pytest.approx(700 ** (-2 / 3)) and m(700) > m(10_000)
    assert math.isclose(1 / m(1000), 100, rel_tol=1e-6)


@pytest.mark.slow
def test_new_keys_run_through_monai_bundle(bundle_workflow: Callable[..., ConfigWorkflow], tmp_path: Path) -> None:
    """x0 prediction, min-SNR, anchor and image concatenation, residual, timestep groups, bf16, recycling, the anchor
    warm-up, self-conditioning, the x0 loss and the validation diagnostics through the real training workflow (tiny
    network, one epoch)."""
    wf = bundle_workflow(
        "train.yaml",
        "quick.yaml",
        run_name="pytest_objective",
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "logs"),
        roi_size=32,
        epochs=1,
        val_interval=1,
        num_inference_steps=2,
        prediction_type="sample",
        snr_gamma=5.0,
        concat_anchor=True,
        anchor_residual=True,
        timestep_groups=1,
        amp=True,
        sample_start_t=600,
        recycling=1.0,
        anchor_warmup_iterations=2,
        anchor_warmup_learning_rate=1e-3,
        self_condition=True,
        anchor_corruption=2.0,
        concat_image=True,
        x0_loss_weight=0.5,
        **{f"network_def#{k}": v for k, v in TINY_NET.items()},
    )
    assert wf.parser.get_parsed_content("train#inferer").anchor_corruption == 2.0
    assert wf.parser.get_parsed_content("loss").x0_weight == 0.5
    warmup = next(h for h in wf.parser.get_parsed_content("train#handlers") if isinstance(h, AnchorWarmup))
    assert warmup.learning_rate == 1e-3 and warmup.optimizer is wf.parser.get_parsed_content("optimizer")
    assert wf.parser.get_parsed_content("network_def").concat_image
    wf.run()
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert {"val_mean_dice", "val_anchor_dice", "val_swapped_dice", "val_image_reliance"} <= set(metrics)
    assert metrics["val_image_reliance"] == pytest.approx(metrics["val_mean_dice"] - metrics["val_swapped_dice"])
    assert wf.parser.get_parsed_content("scheduler").prediction_type == "sample"
    assert (tmp_path / "models" / "model.pt").is_file()
    wf.finalize()
