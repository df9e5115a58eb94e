"""Training handlers: a progress bar with the running loss, and a wall-clock budget (checkpoints and resuming:
:mod:`.checkpoints`; loading weights: :mod:`.weights`)."""

from __future__ import annotations

import logging
import time

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar, TimeLimit
from monai.handlers import from_engine

__all__ = ["LossProgressBar", "WallClockBudget"]

logger = logging.getLogger(__name__)


class LossProgressBar(ProgressBar):
    """Ignite's tqdm progress bar showing the running loss (attachable from a bundle config)."""

    def __init__(self, persist: bool = True, **kwargs) -> None:
        super().__init__(persist=persist, **kwargs)

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # type: ignore[override]
        super().attach(engine, output_transform=lambda output: {"loss": from_engine(["loss"], first=True)(output)})


class WallClockBudget(TimeLimit):
    """Ignite's :class:`~ignite.handlers.TimeLimit` checked at epoch ends: stops training at the first epoch end after
    ``seconds`` of wall-clock time (``None``: no budget), after a last validation when ``validator`` is given and has
    not run at that epoch; checkpoints of that epoch are written by the handlers listed before this one. For training
    runs compared under the same time budget.

    Kept beyond TimeLimit, which lacks them: the clock starts when training starts (TimeLimit's at construction, before
    the data are cached), any budget >= 0 s (TimeLimit: a positive int), every rank of a distributed run stops at the
    same epoch, and the last validation. The budget is per run, not resume-aware: a resumed run gets it afresh.
    """

    def __init__(self, seconds: float | None, validator: Engine | None = None) -> None:
        super().__init__(limit_sec=1)  # TimeLimit's check refuses 0 and fractions: the limit is set below
        self.limit_sec: float | None = seconds  # type: ignore[assignment]
        self.validator = validator

    def attach(self, engine: Engine) -> None:
        if self.limit_sec is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self.start_time = time.time()

    def __call__(self, engine: Engine) -> None:
        elapsed = time.time() - self.start_time
        # all ranks of a distributed run stop at the same epoch, as soon as one of them is past the budget
        if idist.all_reduce(float(elapsed >= self.limit_sec), op="MAX") == 0:
            return
        logger.info(
            f"time budget of {self.limit_sec:g} s reached after {elapsed:.0f} s (epoch {engine.state.epoch}, "
            f"iteration {engine.state.iteration}): stopping"
        )
        if self.validator is not None and self.validator.state.epoch != engine.state.epoch:
            self.validator.run(engine.state.epoch)
        engine.terminate()
