"""MONAI Label app serving the MedSegDiff-V2 bundle (this repository's ``bundle/``, or ``--conf bundle <path>``):

    monailabel start_server --app tools/monailabel_app --studies <images>

Models (``--conf models`` picks some, comma-separated): ``medsegdiff_v2`` (2D images, models/model.pt) and
``medsegdiff_v2_volume`` (volumes, models/model_hippocampus.pt). Active learning: the scoring method and the strategy
``uncertainty`` (the ensemble's mean uncertainty, highest first), next to MONAI Label's ``random`` and ``first``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lib.activelearning import EnsembleUncertaintyScoring, HighestUncertainty
from lib.infer import MedSegDiffInfer
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
MODELS = {"medsegdiff_v2": "image", "medsegdiff_v2_volume": "volume"}  # name -> profile of lib.infer.PROFILES


class MedSegDiffApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, Any]) -> None:
        self.bundle_root = Path(conf.get("bundle") or BUNDLE).expanduser().resolve()
        names = [n.strip() for n in (conf.get("models") or ",".join(MODELS)).split(",") if n.strip()]
        unknown = sorted(set(names) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown models {unknown}: choose among {sorted(MODELS)}")
        self.models = {n: MODELS[n] for n in names}
        meta = json.loads((self.bundle_root / "configs" / "metadata.json").read_text())
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=meta["name"],
            description="Diffusion segmentation: an ensemble gives the mask and its uncertainty map",
            version=meta["version"],
        )

    def init_infers(self) -> dict[str, InferTask]:
        preload = bool(strtobool(self.conf.get("preload", "false")))
        return {n: MedSegDiffInfer(self.bundle_root, profile, preload=preload) for n, profile in self.models.items()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {"uncertainty": EnsembleUncertaintyScoring(self._infers)}  # type: ignore[arg-type]

    def init_strategies(self) -> dict[str, Strategy]:
        return {"uncertainty": HighestUncertainty(), "random": Random(), "first": First()}
