"""The samplers of inference, evaluation and training-time validation (one definition, named in the configs), and DDPM
sampling with fewer steps than training, respaced from the training noise schedule (Nichol & Dhariwal 2021)."""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler


class RespacedDDPMScheduler(DDPMScheduler):
    """``DDPMScheduler`` whose ``set_timesteps(n)`` gives a proper n-step ancestral sampler.

    MONAI's ``DDPMScheduler.step`` always moves from t to t-1, so after ``set_timesteps(100)`` it would denoise
    only one training step per sampling step. Here each step goes from t_i to the next kept timestep t_{i+1} with the
    respaced betas beta'_i = 1 - abar(t_i) / abar(t_{i+1}) (the paper's "100 sampling steps" of a T=1000 model).
    """

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)
        self.timesteps = torch.unique(self.timesteps).flip(0)  # descending, no duplicates after rounding
        steps = self.timesteps.cpu()
        self.previous_timesteps = {int(t): int(p) for t, p in zip(steps[:-1], steps[1:], strict=True)}

    def previous_timestep(self, timestep: int) -> int:
        """The kept timestep after ``timestep`` (-1 after the last one)."""
        t = int(timestep)
        return getattr(self, "previous_timesteps", {}).get(t, t - 1 if t > 0 else -1)

    def step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t, prev = int(timestep), self.previous_timestep(timestep)
        abar_t = self.alphas_cumprod[t].to(sample.device)
        abar_prev = self.alphas_cumprod[prev].to(sample.device) if prev >= 0 else self.one.to(sample.device)
        beta = 1 - abar_t / abar_prev
        if self.prediction_type == "epsilon":
            x0 = (sample - (1 - abar_t).sqrt() * model_output) / abar_t.sqrt()
        elif self.prediction_type == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = abar_t.sqrt() * sample - (1 - abar_t).sqrt() * model_output
        if self.clip_sample:
            x0 = x0.clamp(*self.clip_sample_values)
        # posterior q(x_prev | x_t, x0) of the respaced chain, eq. 6-7 of Ho et al. with beta'
        mean = (abar_prev.sqrt() * beta / (1 - abar_t)) * x0 + (
            (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)
        ) * sample
        if prev < 0:
            return mean, x0
        variance = (beta * (1 - abar_prev) / (1 - abar_t)).clamp(min=1e-20)
        noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        return mean + variance.sqrt() * noise, x0


# sampler name (the configs' ``sampler``) -> scheduler class; all use the training's linear beta schedule
SAMPLERS: dict[str, type[Scheduler]] = {"ddpm": RespacedDDPMScheduler, "ddim": DDIMScheduler}


def make_scheduler(sampler: str, num_train_timesteps: int = 1000, prediction_type: str = "epsilon") -> Scheduler:
    """The sampling scheduler ``sampler`` (ddpm: ancestral, respaced; ddim: deterministic) of a model trained with
    ``num_train_timesteps`` linear-beta steps that predicts ``prediction_type``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    return SAMPLERS[sampler](
        num_train_timesteps=num_train_timesteps, schedule="linear_beta", prediction_type=prediction_type
    )
