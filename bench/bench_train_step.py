"""Time one training step (forward + backward + AdamW) of MedSegDiff-V2 variants and of the UNet baseline.

Explains the per-iteration cost behind a fixed wall-clock comparison (bundle/docs/results.md): the V2 variants
differ only in their Semantic Condition (SS-Former with / without NBP-Filters, none), every sample in the batch has
its own timestep (as in training), and the baseline is configs/baseline.yaml's UNet.

    python bench/bench_train_step.py --preset small --size 128 --batch 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from monai.networks.nets import UNet  # noqa: E402

from scripts.networks import MedSegDiffV2  # noqa: E402


def step_time(net: torch.nn.Module, diffusion: bool, args: argparse.Namespace, device: torch.device) -> float:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    image = torch.rand(args.batch, 3, args.size, args.size, device=device)
    mask = (torch.rand(args.batch, 1, args.size, args.size, device=device) > 0.5).float()
    times = []
    for i in range(args.warmup + args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if diffusion:
            t = torch.randint(0, 1000, (args.batch,), device=device)
            eps, anchor = net(torch.randn_like(mask), t, image=image, with_anchor=True)
            loss = F.mse_loss(eps, mask) + F.binary_cross_entropy_with_logits(anchor, mask)
        else:
            loss = F.binary_cross_entropy_with_logits(net(image), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    variants = [("V2 (U-SA + SS-Former + NBP-Filter)", "ssformer_nbp"), ("V2 without NBP-Filter", "ssformer")]
    variants.append(("V2 without SS-Former", "none"))
    for name, semantic in variants:
        net = MedSegDiffV2(3, 1, preset=args.preset, semantic=semantic).to(device).train()
        rows.append({"model": name, "params": sum(p.numel() for p in net.parameters())})
        rows[-1]["seconds"] = step_time(net, True, args, device)
    unet = UNet(2, 3, 1, (24, 48, 96, 192, 384), (2, 2, 2, 2), num_res_units=2, norm="batch").to(device).train()
    rows.append({"model": "UNet baseline (configs/baseline.yaml)", "params": sum(p.numel() for p in unet.parameters())})
    rows[-1]["seconds"] = step_time(unet, False, args, device)
    print(f"| model | parameters | s per step (batch {args.batch}, {args.size}x{args.size}, {args.device}) |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['seconds']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
