"""Dice of the Condition Model's anchor segmentation (its direct sigmoid output, no diffusion) on a validation list.

A diagnostic for short trainings (bundle/docs/results.md): it shows how far the Condition Model has learned while
the diffusion denoiser may still sample poor masks. Binary (one class) only. From the repository root:

    python bench/studies/anchor_dice.py --weights model.pt --dataset_dir ../shared/data/isic2018_task1_256 \
        --datalist bundle/docs/splits/isic2018_split.json --roi_size 128 --preset small --cases 16
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
sys.path.insert(0, str(BUNDLE))

from monai.bundle import ConfigParser  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--roi_size", type=int, default=128)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--cases", type=int, default=None, help="first N validation cases")
    args = ap.parse_args()
    args.weights = str(Path(args.weights).resolve())
    args.dataset_dir = str(Path(args.dataset_dir).resolve())
    args.datalist = str(Path(args.datalist).resolve())
    os.chdir(BUNDLE)  # the configs' %configs/... macros resolve from the bundle root
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "num_workers": 0, "cache_rate": 0.0})
    parser.update({k: getattr(args, k) for k in ("dataset_dir", "datalist", "roi_size", "preset")})
    net = parser.get_parsed_content("network_def")
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state))  # {"model": ...} or a raw state dict
    net.eval()
    data = parser.get_parsed_content("validate#datalist")[: args.cases]
    transform = parser.get_parsed_content("validate#preprocessing")
    dice, all_fg = [], []
    with torch.no_grad():
        for case in data:
            item = transform(case)
            pred = (net.condition(item["image"][None]).anchor_logits > 0).float()
            gt = item["label"][None]
            denom = pred.sum() + gt.sum()
            dice.append(1.0 if denom == 0 else float(2 * (pred * gt).sum() / denom))
            frac = float(gt.mean())
            all_fg.append(2 * frac / (1 + frac))
    print(
        f"{len(dice)} cases: anchor Dice {sum(dice) / len(dice):.4f}; Dice of an all-foreground mask "
        f"{sum(all_fg) / len(all_fg):.4f}"
    )


if __name__ == "__main__":
    main()
