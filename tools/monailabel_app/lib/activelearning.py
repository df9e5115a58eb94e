"""Active learning by the ensemble's uncertainty: a scoring method that stores, for each unlabelled image, the mean of
its uncertainty map, and a strategy that serves the unlabelled image with the highest score first."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from .infer import MedSegDiffInfer, is_image_2d

logger = logging.getLogger(__name__)

# the image info key that holds {"score", "model", "stamp", "ts"}
SCORE_KEY = "ensemble_uncertainty"


class EnsembleUncertaintyScoring(ScoringMethod):
    """Runs the ensemble on every unlabelled image (2D files with the 2D model, the rest with the volume model) and
    stores ``score``: the mean of its uncertainty map (bits; over the image's own grid) in the image's info. An image
    already scored with the same weights and settings is skipped. The request may set the models' sampling settings
    (e.g. ``ensemble_size``), as an infer request does."""

    def __init__(self, tasks: Mapping[str, MedSegDiffInfer], key: str = SCORE_KEY) -> None:
        super().__init__("Mean uncertainty of the ensemble (entropy of its mean probability) on each unlabelled image")
        self.tasks, self.key = tasks, key

    def task_for(self, uri: str) -> tuple[str, MedSegDiffInfer] | None:
        dimension = 2 if is_image_2d(uri) else 3
        return next(((n, t) for n, t in self.tasks.items() if t.dimension == dimension), None)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        start, summary = time.time(), {"scored": 0, "skipped": 0, "failed": 0}
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        for image_id in images:
            uri = datastore.get_image_uri(image_id)
            found = self.task_for(uri)
            if found is None:
                summary["skipped"] += 1
                continue
            name, task = found
            try:
                options = task.options(request)
                stamp = f"{name}:{task.weights_stamp()}:{sorted(options.items())}"
                if (datastore.get_image_info(image_id).get(self.key) or {}).get("stamp") == stamp:
                    summary["skipped"] += 1
                    continue
                infer = {"image": uri, "skip_writer": True, "logging": "WARNING", **options}
                if request.get("device"):
                    infer["device"] = request["device"]
                _, data = task(infer)
                score = float(torch.as_tensor(data["uncertainty"]).float().mean())
            except Exception as e:  # one unreadable image must not stop the others
                logger.error(f"uncertainty scoring of {image_id} failed: {e}")
                summary["failed"] += 1
                continue
            info = {"score": score, "model": name, "stamp": stamp, "ts": int(time.time())}
            datastore.update_image_info(image_id, {self.key: info})
            summary["scored"] += 1
            logger.info(f"{image_id}: mean ensemble uncertainty {score:.5f} ({name})")
        summary["latency"] = round(time.time() - start, 3)
        logger.info(f"uncertainty scoring: {summary}")
        return summary


class HighestUncertainty(Strategy):
    """Next sample: the unlabelled image with the highest stored ensemble-uncertainty score (ties: the first id);
    images not scored yet come after the scored ones, in id order."""

    def __init__(self, key: str = SCORE_KEY) -> None:
        super().__init__("Unlabelled image on which the ensemble is the most uncertain (run the uncertainty scoring)")
        self.key = key

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        scores = {i: (datastore.get_image_info(i).get(self.key) or {}).get("score") for i in images}
        ranked = sorted(images, key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
        unscored = sum(s is None for s in scores.values())
        if unscored:
            logger.warning(f"{unscored} of {len(images)} unlabelled images have no uncertainty score yet")
        return {"id": ranked[0], "score": scores[ranked[0]]}
