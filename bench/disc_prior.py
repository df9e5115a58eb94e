"""The no-image prior: Dice of the best fixed centred disc, the score a segmenter must beat to show it uses the image.

The radius is chosen on the training cases (``--fit training``, honest) and scored on the validation cases; both
are read through the bundle's own deterministic transform chain (configs/train.yaml), at the training ``roi_size``.

    python bench/disc_prior.py --dataset_dir ../shared/data/isic2018_task1_256 \
        --datalist bundle/docs/splits/isic2018_split.json --roi_size 64 --fit_cases 400
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path.insert(0, str(BUNDLE))

from monai.bundle import ConfigParser  # noqa: E402
from monai.metrics import DiceMetric  # noqa: E402


def masks(parser: ConfigParser, section: str, limit: int | None) -> torch.Tensor:
    """(N, K, H, W) one-hot truth of ``section`` through the bundle's validation preprocessing."""
    data = parser.get_parsed_content(f"{section}#datalist")[:limit]
    transform = parser.get_parsed_content("validate#preprocessing")
    return torch.stack([transform(item)["label"].as_tensor() for item in data])


def disc(size: int, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= radius**2).float()


def dice_of(prior: torch.Tensor, truth: torch.Tensor) -> float:
    metric = DiceMetric(include_background=True, ignore_empty=False)
    metric(prior.expand_as(truth), truth)
    return metric.aggregate().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--roi_size", type=int, default=64)
    ap.add_argument("--fit_cases", type=int, default=400, help="training cases used to choose the radius")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.dataset_dir = str(Path(args.dataset_dir).resolve())
    args.datalist = str(Path(args.datalist).resolve())
    args.json = args.json.resolve() if args.json else None
    os.chdir(BUNDLE)  # the configs' %configs/... macros resolve from the bundle root
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(Path(args.dataset_dir).resolve()),
            "datalist": str(Path(args.datalist).resolve()),
            "roi_size": args.roi_size,
        }
    )
    fit, val = masks(parser, "train", args.fit_cases), masks(parser, "validate", None)
    radii = [r / 2 for r in range(2, args.roi_size + 1)]
    fit_scores = {r: dice_of(disc(args.roi_size, r), fit) for r in radii}
    best = max(fit_scores, key=fit_scores.get)
    val_scores = {r: dice_of(disc(args.roi_size, r), val) for r in radii}
    oracle = max(val_scores, key=val_scores.get)
    result = {
        "radius_fit_on_training": best,
        "training_cases": len(fit),
        "validation_cases": len(val),
        "validation_dice": round(val_scores[best], 4),
        "best_radius_on_validation": oracle,
        "validation_dice_at_that_radius": round(val_scores[oracle], 4),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
