"""Time one training step (forward + backward + AdamW) of MedSegDiff-V2 and of the UNet baseline.

Explains the per-iteration cost behind a fixed wall-clock comparison (bundle/docs/results.md). V2 is timed through
the bundle's own training pieces (``SegDiffusionPrepareBatch`` timestep groups, ``SegDiffusionTrainingInferer`` with
optional bf16 autocast, ``MedSegDiffLoss``); the baseline is configs/baseline.yaml's UNet with Dice + BCE. Each row
is the median of ``--repeats`` steps after ``--warmup`` steps, in one process, so rows compare on one machine.
``--bundle`` times another checkout's network (e.g. a ``git worktree`` of an older commit; it must be the only
``scripts`` package imported, so run it as a separate process) with per-case timesteps in fp32, as that code trained.

    python bench/bench_train_step.py --preset small --size 128 --batch 8 --groups none 2 1 --amp both
    python bench/bench_train_step.py --preset small --size 128 --batch 8 --patch-size 2 --variants v2
    python bench/bench_train_step.py --preset paper --size 256 --batch 8 --bundle ../old/bundle --variants v2
    python bench/bench_train_step.py --preset paper --size 256 --batch 8 --amp on --variants v2 --profile 12
``--flops`` counts the step's floating-point operations per image (torch's FlopCounterMode, one image) by operator;
``--profile N`` prints the N operators with the most CPU time in one more step (torch profiler); ``--compile`` times
the network wrapped in ``torch.compile`` (the first step, which compiles, is reported apart).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import BUNDLE, arg_parser, cpu_model, use_bundle


def step_time(step, device: torch.device, warmup: int, repeats: int) -> float:
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_flops(step, one_image: dict) -> None:
    """FLOPs of one step on one image, by operator (convolutions forward and backward dominate)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(data=one_image)
    print(f"GFLOP per image and step: {counter.get_total_flops() / 1e9:.1f}")
    for op, n in sorted(counter.get_flop_counts()["Global"].items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {op}: {n / 1e9:.1f}")


def profile(step, rows: int) -> None:
    """The operators with the most self CPU time in one step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--groups", nargs="+", default=["2"], help="timestep groups per batch; 'none': one per case")
    ap.add_argument("--amp", choices=["off", "on", "both"], default="off", help="bf16 autocast + channels_last")
    ap.add_argument("--patch-size", type=int, help="the SS-Former's token patch (default: the preset's)")
    ap.add_argument("--variants", nargs="+", default=["v2", "unet"], choices=["v2", "unet"])
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--flops", action="store_true", help="count FLOPs of one V2 step per image, by operator")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest operators of a step")
    ap.add_argument("--compile", action="store_true", help="wrap the V2 network in torch.compile")
    args = ap.parse_args()
    use_bundle(args.bundle)
    from monai.networks.nets import UNet
    from monai.networks.schedulers import DDPMScheduler

    from scripts.diffusion import training as diffusion
    from scripts.networks import MedSegDiffV2

    new_api = hasattr(diffusion, "stratified_timesteps")  # the bundle's training pieces, or an older checkout's
    device = torch.device(args.device)
    torch.manual_seed(0)
    image = torch.rand(args.batch, 3, args.size, args.size, device=device)
    mask = (torch.rand(args.batch, 1, args.size, args.size, device=device) > 0.5).float()
    batch = {"image": image, "label": mask}
    rows = []
    amps = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    if "v2" in args.variants:
        for groups in args.groups if new_api else ["none"]:
            g = None if groups == "none" else int(groups)
            for amp in amps if new_api else [False]:
                sizes = {} if args.patch_size is None else {"patch_size": args.patch_size}
                name = f"V2 {args.preset}" + ("" if args.patch_size is None else f", patch {args.patch_size}")
                net = MedSegDiffV2(3, 1, preset=args.preset, **sizes).to(device).train()
                mf = torch.channels_last if amp else torch.contiguous_format
                net = net.to(memory_format=mf)
                model = torch.compile(net) if args.compile else net
                opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
                sched = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta")
                prep = diffusion.SegDiffusionPrepareBatch(1000, **({"timestep_groups": g} if new_api else {}))
                kw = {"autocast_dtype": torch.bfloat16} if amp else {}
                inferer = diffusion.SegDiffusionTrainingInferer(sched, **kw)
                loss_fn = diffusion.MedSegDiffLoss()

                def step(model=model, opt=opt, prep=prep, inferer=inferer, loss_fn=loss_fn, mf=mf, data=batch) -> None:
                    img, lbl, _, kwargs = prep(data, device)
                    loss = loss_fn(inferer(img.contiguous(memory_format=mf), model, **kwargs), lbl)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                if args.flops:
                    count_flops(step, {k: v[:1] for k, v in batch.items()})
                if args.compile:
                    t0 = time.perf_counter()
                    step()
                    print(f"first step (compiles): {time.perf_counter() - t0:.1f} s", flush=True)
                rows.append(
                    {
                        "model": name + (", compiled" if args.compile else ""),
                        "timestep_groups": groups,
                        "precision": "bf16" if amp else "fp32",
                        "params": sum(p.numel() for p in net.parameters()),
                        "seconds": step_time(step, device, args.warmup, args.repeats),
                    }
                )
                print(rows[-1], flush=True)
                if args.profile:
                    profile(step, args.profile)
    if "unet" in args.variants:
        for amp in amps:
            unet = UNet(2, 3, 1, (24, 48, 96, 192, 384), (2, 2, 2, 2), num_res_units=2, norm="batch").to(device)
            mf = torch.channels_last if amp else torch.contiguous_format
            unet = unet.to(memory_format=mf).train()
            opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)

            def ustep(unet=unet, opt=opt, amp=amp, mf=mf) -> None:
                ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
                with ctx:
                    out = unet(image.contiguous(memory_format=mf))
                loss = F.binary_cross_entropy_with_logits(out.float(), mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            rows.append(
                {
                    "model": "UNet baseline",
                    "timestep_groups": "-",
                    "precision": "bf16" if amp else "fp32",
                    "params": sum(p.numel() for p in unet.parameters()),
                    "seconds": step_time(ustep, device, args.warmup, args.repeats),
                }
            )
            print(rows[-1], flush=True)
    where = f"{args.device} ({cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)})"
    print(f"\n{where}, torch {torch.__version__}, {torch.get_num_threads()} threads, bundle {args.bundle}")
    print(f"| model | timestep groups | precision | parameters | s per step (batch {args.batch}, {args.size}px) |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['timestep_groups']} | {r['precision']} | {r['params']:,} | {r['seconds']:.3f} |")
    if args.json:
        meta = {"args": {k: str(v) for k, v in vars(args).items()}, "device": where, "torch": torch.__version__}
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
