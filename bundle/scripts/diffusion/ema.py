"""EMA of the network weights whose averaging window grows with the run, right for short and long trainings."""

from __future__ import annotations

from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from ignite.handlers.state_param_scheduler import LambdaStateScheduler
from torch import nn


class PowerMomentum:
    """m_i = max(floor, i^-power) at iteration i (the "power" EMA warm-up of Karras et al. 2024 and diffusers'
    ``EMAModel``): the first update copies the weights, then the EMA averages over a window of about 1 / m_i = i^power
    iterations (power 2/3: 80 at i = 700, 460 at i = 10,000), until the window reaches 1 / floor."""

    def __init__(self, power: float, floor: float) -> None:
        self.power, self.floor = power, floor

    def __call__(self, iteration: int) -> float:
        return max(self.floor, float(max(iteration, 1)) ** -self.power)


class PowerEMAHandler(EMAHandler):
    """Ignite ``EMAHandler`` whose momentum follows ``PowerMomentum(power, momentum)`` at every iteration, resumed
    from the trainer's iteration count. ``power=None`` keeps ``momentum`` constant."""

    def __init__(self, model: nn.Module, momentum: float = 1e-4, power: float | None = 2 / 3) -> None:
        super().__init__(model, momentum=momentum)
        self.power = power

    def attach(self, engine: Engine, name: str = "ema_momentum", **kwargs) -> None:  # type: ignore[override]
        if self.power is not None:  # first the momentum, then the update, at the same event
            scheduler = LambdaStateScheduler(PowerMomentum(self.power, self.momentum), param_name=name, create_new=True)
            scheduler.attach(engine, Events.ITERATION_COMPLETED)
        super().attach(engine, name=name, warn_if_exists=False, **kwargs)
