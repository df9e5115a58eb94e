"""Dice against denoiser calls per image (or slice): ensemble members x sampling steps, DDPM and DDIM, pure-noise and
anchor-initialised starts, and the Condition Model's anchor alone and as one more STAPLE rater.

Each case is sampled once per (sampler, steps, start) with the largest ensemble; a smaller ensemble is the first n of
those members (members are independent draws), so one run scores every members x steps cell. Members are soft, fused
as inference fuses them (thresholded at 0.5, then STAPLE); Dice is MONAI's, per class, averaged. Volumes (with
``--overlays volume.yaml ...``) are sampled slice by slice as the configs sample them (``slice_axis``,
``context_slices``, ``slice_batch``) and scored whole, in the network's space; their calls are per slice. Select on
``--split validation``; report test once.

    python bench/denoiser_calls.py --weights bundle/models/model.pt --overlays weights/isic_128.yaml \
        --dataset_dir ../shared/data/isic2018_task1_256 --datalist bundle/docs/splits/isic2018_split.json \
        --split validation --runs ddpm:1 ddpm:2 ddpm:5 ddpm:10 ddim:2 ddim:10 ddpm:2@400 --json calls.json
    python bench/denoiser_calls.py --weights bundle/models/model_hippocampus.pt \
        --overlays volume.yaml weights/hippocampus_64.yaml --dataset_dir ../shared/data/msd_hippocampus \
        --datalist bundle/docs/splits/msd_hippocampus_split.json --split validation --json calls_hippocampus.json
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from common import absolute_paths, add_weights_arguments, arg_parser, cpu_model, trained_network, use_bundle

use_bundle()

from scripts.diffusion.fusion import fuse, onehot_to_labels  # noqa: E402
from scripts.diffusion.sampling import DiffusionSegmentationInferer  # noqa: E402
from scripts.diffusion.schedulers import SAMPLERS  # noqa: E402
from scripts.evaluation.metrics import dice_scores  # noqa: E402

GRID = ((1, 1), (1, 2), (1, 5), (3, 3), (5, 2), (10, 2), (10, 5), (10, 10))  # (members, steps)


def label_dice(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over classes 1..k of the Dice of two label maps (both empty: 1), with the bundle's Dice."""
    a = torch.as_tensor(np.stack([pred == c for c in range(1, k + 1)])).reshape(k, -1)
    b = torch.as_tensor(np.stack([truth == c for c in range(1, k + 1)])).reshape(k, -1)
    return float(dice_scores(a, b).mean())


def staple_with_prior(members: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """STAPLE of the members with the anchor as one more rater (binary (N, K, H, W) and (K, H, W))."""
    return fuse(np.concatenate([members, anchor[None]]), "staple")


def main() -> None:
    ap = arg_parser(__doc__)
    add_weights_arguments(ap, overlays=["weights/isic_128.yaml"], cases=0)
    ap.add_argument(
        "--runs",
        nargs="+",
        default=["ddpm:1", "ddpm:2", "ddpm:3", "ddpm:5", "ddpm:10", "ddim:1", "ddim:2", "ddim:3", "ddim:5", "ddim:10"]
        + ["ddpm:2@400", "ddpm:5@400"],
        help="sampler:steps[@start_t] sampled with 10 members per case (@start_t: anchor-initialised start)",
    )
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. patch_size=2")
    args = absolute_paths(ap.parse_args(), "weights", "dataset_dir", "datalist", "json")
    overrides = {k: json.loads(v) if v[:1] in "0123456789[{tfn-" else v for k, v in (s.split("=", 1) for s in args.set)}
    torch.manual_seed(0)
    parser, net = trained_network(args, overrides)
    k, t_train = net.out_channels, int(parser.get_parsed_content("num_train_timesteps"))
    prediction_type = parser.get_parsed_content("prediction_type")
    members_max = max(m for m, _ in GRID)
    runs = []
    for spec in args.runs:
        sampler, _, rest = spec.partition(":")
        steps, _, start = rest.partition("@")
        runs.append((sampler, int(steps), int(start) if start else None))
    scores: dict[str, list[float]] = {}
    calls: dict[str, int] = {}

    def add(name: str, n_calls: int, value: float) -> None:
        scores.setdefault(name, []).append(value)
        calls[name] = n_calls

    slicing = {key: parser.get_parsed_content(key) for key in ("slice_axis", "slice_batch", "context_slices")}
    t0, n_cases = time.perf_counter(), 0
    for i, batch in enumerate(parser.get_parsed_content("validate#dataloader")):
        if args.cases and i >= args.cases:
            break
        image, truth = batch["image"], onehot_to_labels(batch["label"][0].numpy(), 0)
        anchor = None
        for sampler, steps, start in runs:
            sched = SAMPLERS[sampler](t_train, schedule="linear_beta", prediction_type=prediction_type)
            inferer = DiffusionSegmentationInferer(
                sched,
                steps,
                members_max,
                fusion="samples",
                seed=i,
                soft_members=True,
                start_t=start,
                anchor_probability=True,
                **slicing,
            )
            out = inferer(image, net)[0].float().numpy()  # (N*K + K, *spatial): the members, then the anchor
            members = (out[: members_max * k].reshape(members_max, k, *truth.shape) > 0.5).astype(np.uint8)
            if anchor is None:  # the Condition Model's mask: the same in every run
                anchor = (out[members_max * k :] > 0.5).astype(np.uint8)
                add("anchor alone (Condition Model)", 0, label_dice(onehot_to_labels(anchor, 0), truth, k))
            tag = f"{sampler}{'' if start is None else f', anchor start t={start}'}"
            for m, s in GRID:
                if s == steps and (start is None or m == members_max):
                    add(f"{m} x {s}, {tag}", m * s, label_dice(fuse(members[:m], "staple"), truth, k))
            if start is None and sampler == "ddpm" and steps in (2, 10):
                add(
                    f"10 x {steps} + anchor as a rater, ddpm",
                    10 * steps,
                    label_dice(staple_with_prior(members, anchor), truth, k),
                )
        n_cases += 1
        if n_cases % 10 == 0:
            print(f"{n_cases} cases, {time.perf_counter() - t0:.0f} s", flush=True)
    rows = sorted(scores, key=lambda name: (calls[name], name))
    table = ["| setting (members x steps, sampler) | denoiser calls per image (slice) | Dice |", "|---|---:|---:|"]
    table += [f"| {name} | {calls[name]} | {np.mean(scores[name]):.4f} |" for name in rows]
    print("\n".join(table))
    result = {
        "weights": str(args.weights),
        "split": args.split,
        "cases": n_cases,
        "cpu": cpu_model(),
        "seconds": round(time.perf_counter() - t0),
        "rows": {name: {"calls": calls[name], "dice": round(float(np.mean(scores[name])), 4)} for name in rows},
        "per_case": {name: [round(v, 5) for v in scores[name]] for name in rows},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
