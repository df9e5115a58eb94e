"""Benchmark ensemble sampling: seconds per image (slice) for an ensemble of ``--ensemble`` members.

Settings measured: DDPM with 100 respaced steps (the paper) and DDIM with few steps; with the Condition Model
cached (run once per image, ``DiffusionSegmentationInferer``) and uncached (recomputed at every step and for every
member, as a naive loop does); fp32 and bf16 autocast (channels_last); optionally ``torch.compile``. Random weights:
the time does not depend on them (Dice against denoiser calls: ``bench/denoiser_calls.py``).

Example::

    python bench/bench_sampling.py --preset paper --size 256 --ensemble 10 --settings ddim:10 ddpm:100
    python bench/bench_sampling.py --preset small --size 128 --patch-size 2 --ensemble 5 --settings ddim:2
    python bench/bench_sampling.py --device cuda --settings ddpm:10 --modes cached-fp32 --profile 15

``--profile N`` then runs the ensemble once more, two DDPM steps in fp32, under the torch profiler (CPU, and CUDA on
a GPU) and prints the N operators with the most self time on the device.
"""

from __future__ import annotations

import contextlib
import json
import platform
import resource
import time
from pathlib import Path

import torch

from common import arg_parser, use_bundle

use_bundle()

from monai.networks.schedulers import DDIMScheduler  # noqa: E402

from scripts.diffusion.sampling import DiffusionSegmentationInferer  # noqa: E402
from scripts.diffusion.schedulers import RespacedDDPMScheduler  # noqa: E402
from scripts.networks import MedSegDiffV2  # noqa: E402


def scheduler(kind: str):
    cls = {"ddim": DDIMScheduler, "ddpm": RespacedDDPMScheduler}[kind]
    return cls(num_train_timesteps=1000, schedule="linear_beta")


class UncachedInferer(DiffusionSegmentationInferer):
    """The same sampler, but the Condition Model runs at every step for every member (the naive loop)."""

    @torch.no_grad()
    def sample(self, image, network, generator=None):
        b, n, k = image.shape[0], self.ensemble_size, network.out_channels
        self.scheduler.set_timesteps(self.num_inference_steps, device=image.device)
        images = image.repeat_interleave(n, 0).contiguous(memory_format=self.memory_format)
        x = torch.randn((b * n, k, *image.shape[2:]), generator=generator, device=image.device)
        x = x.contiguous(memory_format=self.memory_format)
        autocast = (
            torch.autocast(image.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype
            else contextlib.nullcontext()
        )
        for t in self.scheduler.timesteps:
            with autocast:
                eps = network(x, t, image=images)
            x, _ = self.scheduler.step(eps.float(), int(t), x, **self._step_kwargs(generator))
        return (x > 0).float().reshape(b, n, k, *image.shape[2:])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_setting(net, image, kind: str, steps: int, ensemble: int, cached: bool, bf16: bool, repeats: int) -> float:
    cls = DiffusionSegmentationInferer if cached else UncachedInferer
    net.to(memory_format=torch.channels_last if bf16 else torch.contiguous_format)
    inferer = cls(
        scheduler(kind),
        steps,
        ensemble,
        fusion="samples",
        seed=0,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        channels_last=bf16,
    )
    times = []
    for _ in range(repeats):
        sync(image.device)
        t0 = time.perf_counter()
        inferer(image, net)
        sync(image.device)
        times.append(time.perf_counter() - t0)
    if repeats > 1:  # e.g. a compiled network: its first call includes the compilation
        print(f"  runs: {', '.join(f'{t:.1f}' for t in times)} s", flush=True)
    return min(times)


def profile(net, image, ensemble: int, rows: int) -> None:
    """The operators with the most self time on the device in a two-step DDPM ensemble (fp32, cached condition)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if image.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        time_setting(net, image, "ddpm", 2, ensemble, True, False, 1)
    key = "self_cuda_time_total" if image.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=40), flush=True)


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--patch-size", type=int, help="the SS-Former's token patch (default: the preset's)")
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--out-channels", type=int, default=1)
    ap.add_argument("--ensemble", type=int, default=10)
    ap.add_argument("--settings", nargs="+", default=["ddim:5", "ddim:10", "ddim:20", "ddpm:100"])
    ap.add_argument("--modes", nargs="+", default=["cached-fp32", "cached-bf16", "uncached-fp32"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd network (cached modes)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=1e9, help="skip settings whose estimate exceeds this")
    ap.add_argument(
        "--keep-freed-memory", action="store_true", help="scripts.runtime.allocator.keep_freed_memory (glibc)"
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest operators")
    args = ap.parse_args()
    if args.keep_freed_memory:
        from scripts.runtime.allocator import keep_freed_memory

        keep_freed_memory()

    device = torch.device(args.device)
    torch.manual_seed(0)
    net = MedSegDiffV2(args.in_channels, args.out_channels, preset=args.preset, patch_size=args.patch_size)
    net = net.to(device).eval()
    image = torch.rand(1, args.in_channels, args.size, args.size, device=device)
    info = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "preset": args.preset,
        "patch_size": args.patch_size,
        "size": args.size,
        "ensemble": args.ensemble,
        "keep_freed_memory": args.keep_freed_memory,
    }
    print(json.dumps(info))
    # warm-up (oneDNN/cuDNN kernel selection) outside the timings
    time_setting(net, image, "ddim", 2, args.ensemble, True, False, 1)
    time_setting(net, image, "ddim", 2, args.ensemble, True, True, 1)
    rows = []
    per_step: dict[str, float] = {}
    nets = {"": net}
    if args.compile:
        nets["compiled"] = torch.compile(net)
    for setting in args.settings:
        kind, steps = setting.split(":")
        for mode in args.modes:
            cached, dtype = mode.split("-")
            est = per_step.get(mode, 0) * int(steps)
            if est > args.max_seconds:
                rows.append({"sampler": kind, "steps": int(steps), "mode": mode, "seconds": None, "skipped_est": est})
                print(f"{kind:5s} {steps:>4s} {mode:14s} skipped (estimated {est:.0f} s)", flush=True)
                continue
            for tag, model in nets.items():
                if tag and not mode.startswith("cached"):
                    continue
                repeats = max(2, args.repeats) if tag else args.repeats  # the first compiled call compiles
                s = time_setting(
                    model, image, kind, int(steps), args.ensemble, cached == "cached", dtype == "bf16", repeats
                )
                per_step[mode] = s / int(steps)
                name = f"{mode}{'-' + tag if tag else ''}"
                rows.append({"sampler": kind, "steps": int(steps), "mode": name, "seconds": s})
                print(f"{kind:5s} {steps:>4s} {name:22s} {s:8.2f} s per image ({args.ensemble} samples)", flush=True)
    if args.profile:
        profile(net, image, args.ensemble, args.profile)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out = {"info": info, "rows": rows, "peak_rss_gib": peak}
    if device.type == "cuda":
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
