"""Training handlers: a progress bar with the running loss, and a wall-clock budget (checkpoints and resuming:
:mod:`.checkpoints`; loading weights: :mod:`.weights`)."""

from __future__ import annotations

import logging
import time

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import from_engine

__all__ = ["LossProgressBar", "WallClockBudget"]

logger = logging.getLogger(__name__)


class LossProgressBar(ProgressBar):
    """Ignite's tqdm progress bar showing the running loss (attachable from a bundle config)."""

    def __init__(self, persist: bool = True, **kwargs) -> None:
        super().__init__(persist=persist, **kwargs)

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # type: ignore[override]
        super().attach(engine, output_transform=lambda output: {"loss": from_engine(["loss"], first=True)(output)})


class WallClockBudget:
    """Stops training at the first epoch end after ``seconds`` of wall-clock time (``None``: no budget), after a last
    validation when ``validator`` is given and has not run at that epoch; checkpoints of that epoch are written by the
    handlers listed before this one. For training runs compared under the same time budget.

    Not ignite's ``TimeLimit``, whose rule differs: its clock starts when it is built (before the data are cached), it
    takes a positive whole number of seconds, and it terminates without the last validation or a common epoch for
    every rank of a distributed run."""

    def __init__(self, seconds: float | None, validator: Engine | None = None) -> None:
        self.seconds, self.validator = seconds, validator
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        if self.seconds is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        elapsed = time.perf_counter() - self._start
        # all ranks of a distributed run stop at the same epoch, as soon as one of them is past the budget
        if idist.all_reduce(float(elapsed >= self.seconds), op="MAX") == 0:
            return
        logger.info(
            f"time budget of {self.seconds:g} s reached after {elapsed:.0f} s (epoch {engine.state.epoch}, "
            f"iteration {engine.state.iteration}): stopping"
        )
        if self.validator is not None and self.validator.state.epoch != engine.state.epoch:
            self.validator.run(engine.state.epoch)
        engine.terminate()
