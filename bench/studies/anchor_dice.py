"""Dice of the Condition Model's anchor segmentation (its direct sigmoid output, no diffusion) on a validation list.

A diagnostic for short trainings (bundle/docs/results.md): it shows how far the Condition Model has learned while
the diffusion denoiser may still sample poor masks. Binary (one class) only. From the repository root:

    python bench/studies/anchor_dice.py --weights model.pt --dataset_dir ../shared/data/isic2018_task1_256 \
        --datalist bundle/docs/splits/isic2018_split.json --roi_size 128 --preset small --cases 16
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for its shared set-up

from common import absolute_paths, arg_parser, bundle_config  # noqa: E402


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--roi_size", type=int, default=128)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--cases", type=int, default=None, help="first N validation cases")
    args = absolute_paths(ap.parse_args(), "weights", "dataset_dir", "datalist")
    settings = {k: getattr(args, k) for k in ("dataset_dir", "datalist", "roi_size", "preset")}
    parser = bundle_config(["train.yaml"], {"num_workers": 0, "cache_rate": 0.0, **settings})
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
