"""Benchmark the MedSegDiff-V2 network: parameters, FLOPs, inference and training-step time.

Measures, per batch size:

* ``forward``: one full forward without gradients, Condition Model included (``m(x_t, t, image=image)``),
  one random timestep per sample (as in training);
* ``denoiser step``: the Diffusion Model only, on a cached condition (``m(x_t, t, condition=cond)``) with one
  timestep shared by the batch: what one sampling step (or one ensemble step run as a batch) costs;
* ``train step``: forward + backward of an MSE loss on the predicted noise, plus one AdamW step;
* FLOPs of one forward, counted by ``torch.utils.flop_counter.FlopCounterMode``, split into Condition Model and
  denoiser, plus an estimate of what that counter leaves out (FFTs; the complex matmul counted as real).

Example::

    python bench/bench_network.py --preset small --size 64 --batch 1 2
    python bench/bench_network.py --preset paper --size 256 --batch 1 8 --bf16 --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from common import BUNDLE, arg_parser, cpu_model, use_bundle

use_bundle()
try:
    from scripts.networks import PRESETS, MedSegDiffV2
except ImportError:  # the bundle's other modules need MONAI/ignite; the network needs torch alone (e.g. a bare GPU box)
    _stub = types.ModuleType("scripts")
    _stub.__path__ = [str(BUNDLE / "scripts")]
    sys.modules["scripts"] = _stub
    from scripts.networks import PRESETS, MedSegDiffV2

aten = torch.ops.aten

# parameter groups: top-level children of MedSegDiffV2 -> group name (anything unlisted goes to the trunk)
PARAM_GROUPS = {
    "condition_model": "condition model",
    "semantic_condition": "SS-Former",
    "anchor_condition": "anchor condition",
}
TRUNK = "diffusion trunk"

FFT_OPS = {aten._fft_c2c.default: 1.0, aten._fft_r2c.default: 0.5, aten._fft_c2r.default: 0.5}
MATMUL_OPS = (aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default)


# --------------------------------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    """Torch version, thread settings and the device name."""
    backend = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in torch.__config__.parallel_info().splitlines()
            if "parallel backend" in ln
        ),
        "?",
    )
    env: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "aten_parallel_backend": backend,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "device_name": cpu_model(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
        )
    return env


# --------------------------------------------------------------------------------------------------------------------
# parameters and FLOPs
# --------------------------------------------------------------------------------------------------------------------
def count_parameters(model: MedSegDiffV2) -> dict[str, Any]:
    """Total parameters and their split over condition model / diffusion trunk / SS-Former / anchor condition."""
    groups = {"condition model": 0, TRUNK: 0, "SS-Former": 0, "anchor condition": 0}
    trunk_parts = []
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        group = PARAM_GROUPS.get(name, TRUNK)
        groups[group] += n
        if group == TRUNK and n:
            trunk_parts.append(name)
    nbp = sum(p.numel() for name, p in model.named_parameters() if ".nbp." in name)
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(groups.values()), "parameter groups do not add up"
    return {"total": total, "groups": groups, "trunk_parts": trunk_parts, "nbp_filters": nbp}


class UncountedFlops(TorchDispatchMode):
    """Estimates the FLOPs FlopCounterMode leaves out: FFTs (~5 N log2 N per complex transform of N points,
    half that for real-input/real-output ones) and complex matmuls, which it counts with the real formula
    (2 flops per multiply-add) while a complex multiply-add costs 8 real flops: 3x the counted amount is missing."""

    def __init__(self) -> None:
        super().__init__()
        self.fft = 0.0
        self.complex_matmul = 0.0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in FFT_OPS:
            dims = args[1]
            sized = out if func is aten._fft_c2r.default else args[0]  # c2r: the transform length is the output's
            n = math.prod(sized.shape[d] for d in dims)
            batch = sized.numel() / n
            self.fft += FFT_OPS[func] * 5.0 * n * math.log2(max(n, 2)) * batch
        elif func in MATMUL_OPS and out.is_complex():
            a, b = (args[1], args[2]) if func in (aten.addmm.default, aten.baddbmm.default) else (args[0], args[1])
            macs = out.numel() * a.shape[-1]
            self.complex_matmul += 3 * 2 * macs
        return out


def count_flops(model: MedSegDiffV2, x: torch.Tensor, t: torch.Tensor, image: torch.Tensor, amp: Callable) -> dict:
    """FLOPs of one forward pass (no grad), for the Condition Model and the denoiser separately."""
    result = {}
    with torch.no_grad(), amp():
        for part in ("condition", "denoiser"):
            with FlopCounterMode(display=False) as counter, UncountedFlops() as extra:
                if part == "condition":
                    cond = model.condition(image)
                else:
                    model(x, t, condition=cond)
            result[part] = {
                "counted": counter.get_total_flops(),
                "fft_est": extra.fft,
                "complex_matmul_missing_est": extra.complex_matmul,
            }
    return result


# --------------------------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median/min wall time in ms of ``fn`` after ``warmup`` calls (synchronising CUDA around each call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times}


@contextlib.contextmanager
def peak_memory(device: torch.device, record: dict[str, Any], key: str) -> Iterator[None]:
    """Peak CUDA memory (GiB) allocated inside the block; nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        torch.cuda.synchronize()
        record[key] = torch.cuda.max_memory_allocated(device) / 2**30


def bench_batch(
    model: MedSegDiffV2, args: argparse.Namespace, batch: int, device: torch.device, amp: Callable
) -> dict[str, Any]:
    """All measurements for one batch size."""
    fmt = torch.channels_last if args.bf16 else torch.contiguous_format
    gen = torch.Generator().manual_seed(batch)
    image = torch.randn(batch, args.in_channels, args.size, args.size, generator=gen).to(device, memory_format=fmt)
    x_t = torch.randn(batch, args.out_channels, args.size, args.size, generator=gen).to(device, memory_format=fmt)
    noise = torch.randn(x_t.shape, generator=gen).to(device, memory_format=fmt)
    t_train = torch.randint(0, 1000, (batch,), generator=gen).to(device)  # one timestep per sample
    t_step = 500  # sampling: one timestep shared by the batch
    res: dict[str, Any] = {"batch": batch}

    model.eval()
    with torch.no_grad(), amp():
        cond = model.condition(image)
    res["flops"] = count_flops(model, x_t, t_train, image, amp)

    def forward() -> None:
        with torch.no_grad(), amp():
            model(x_t, t_train, image=image)

    def denoiser_step() -> None:
        with torch.no_grad(), amp():
            model(x_t, t_step, condition=cond)

    with peak_memory(device, res, "forward_peak_gib"):
        res["forward"] = timed(forward, device, args.warmup, args.repeats)
    with peak_memory(device, res, "denoiser_peak_gib"):
        res["denoiser_step"] = timed(denoiser_step, device, args.warmup, args.repeats)

    if not args.skip_train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            with amp():
                loss = torch.nn.functional.mse_loss(model(x_t, t_train, image=image).float(), noise)
            loss.backward()
            opt.step()

        with peak_memory(device, res, "train_peak_gib"):
            res["train_step"] = timed(train_step, device, args.warmup, args.repeats)
        del opt
        model.zero_grad(set_to_none=True)
        model.eval()
    return res


# --------------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------------
def gflops(x: float) -> str:
    return f"{x / 1e9:,.2f}"


def markdown(report: dict[str, Any]) -> str:
    env, cfg, params = report["environment"], report["config"], report["parameters"]
    mode = "bf16 autocast + channels_last" if cfg["bf16"] else "fp32"
    lines = [
        f"### MedSegDiffV2 preset `{cfg['preset']}`, {cfg['size']}x{cfg['size']}, {cfg['in_channels']} image "
        f"channel(s), {cfg['out_channels']} mask channel(s), {env['device']} {mode}",
        "",
        f"- device: {env['device_name']}"
        + (
            f" (CUDA {env['cuda']}, cuDNN {env['cudnn']}, cudnn.benchmark={env['cudnn_benchmark']})"
            if "cuda" in env
            else ""
        ),
        f"- torch {env['torch']}, Python {env['python']}; CPU: {env['cpu']}, os.cpu_count()={env['cpu_count']}, "
        f"affinity={env['cpu_affinity']}; torch threads={env['torch_threads']}, "
        f"interop={env['torch_interop_threads']}, "
        f"backend={env['aten_parallel_backend']}, mkldnn={env['mkldnn']}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}",
        f"- load average at start {fmt_load(env['loadavg_start'])}, at end {fmt_load(env.get('loadavg_end'))}; "
        f"timings: median (min) of {cfg['repeats']} after {cfg['warmup']} warm-up; "
        f"peak RSS of the process {env.get('max_rss_gib', float('nan')):.1f} GiB",
        "",
        "| parameters | count | share |",
        "|---|---:|---:|",
    ]
    for name, n in params["groups"].items():
        label = f"{name} ({', '.join(params['trunk_parts'])})" if name == TRUNK else name
        lines.append(f"| {label} | {n:,} | {100 * n / params['total']:.1f}% |")
    if params["nbp_filters"]:
        lines.append(
            f"| of which NBP-Filters (in SS-Former) | {params['nbp_filters']:,} | "
            f"{100 * params['nbp_filters'] / params['total']:.1f}% |"
        )
    lines += [f"| **total** | **{params['total']:,}** | 100% |", ""]

    cuda = env["device"].startswith("cuda")
    head = "| batch | forward, full (ms) | denoiser step, cached cond. (ms) | fwd+bwd+AdamW (ms) | train samples/s |"
    sep = "|---:|---:|---:|---:|---:|"
    if cuda:
        head += " peak GiB fwd / step / train |"
        sep += "---:|"
    lines += [head, sep]
    for r in report["results"]:
        row = f"| {r['batch']} | {fmt_t(r['forward'])} | {fmt_t(r['denoiser_step'])} | "
        if "train_step" in r:
            row += f"{fmt_t(r['train_step'])} | {1e3 * r['batch'] / r['train_step']['median_ms']:.2f} |"
        else:
            row += "- | - |"
        if cuda:
            mem = [r.get(k) for k in ("forward_peak_gib", "denoiser_peak_gib", "train_peak_gib")]
            row += " " + " / ".join("-" if m is None else f"{m:.2f}" for m in mem) + " |"
        lines.append(row)
    lines += [
        "",
        "| batch | GFLOP forward, full | condition model | denoiser | not counted, est.: FFT | "
        "not counted, est.: complex matmul |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        c, d = r["flops"]["condition"], r["flops"]["denoiser"]
        lines.append(
            f"| {r['batch']} | {gflops(c['counted'] + d['counted'])} | {gflops(c['counted'])} | {gflops(d['counted'])} "
            f"| {gflops(c['fft_est'] + d['fft_est'])} "
            f"| {gflops(c['complex_matmul_missing_est'] + d['complex_matmul_missing_est'])} |"
        )
    lines += [
        "",
        "FLOPs: FlopCounterMode counts matmuls and convolutions only (1 multiply-add = 2 FLOPs); it does not count FFT "
        "ops (aten._fft_*), and counts complex matmuls with the real formula. The two right-hand columns estimate "
        "that remainder (5 N log2 N per complex N-point FFT; 6 extra FLOPs per complex multiply-add); norms, "
        "activations and element-wise ops are counted by neither.",
        "",
        "forward, full: no grad, Condition Model included, one timestep per sample. denoiser step: Diffusion Model "
        "on a cached condition, one timestep for the batch (one sampling step). fwd+bwd+AdamW: MSE on the predicted "
        "noise, full model (Condition Model included), one AdamW step.",
    ]
    return "\n".join(lines)


def fmt_t(t: dict[str, float]) -> str:
    return f"{t['median_ms']:,.1f} ({t['min_ms']:,.1f})"


def fmt_load(load: Any) -> str:
    return "-" if not load else " / ".join(f"{x:.2f}" for x in load)


# --------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arg_parser(__doc__.split("\n\n")[0], argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--size", type=int, default=256, help="image / mask height and width")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes")
    p.add_argument("--in-channels", type=int, default=3, help="image channels")
    p.add_argument("--out-channels", type=int, default=1, help="mask channels")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast with channels_last model and inputs")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark")
    p.add_argument("--skip-train", action="store_true", help="skip the fwd+bwd+AdamW measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the full results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available in this torch build.")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(args.seed)

    model = MedSegDiffV2(in_channels=args.in_channels, out_channels=args.out_channels, preset=args.preset).to(device)
    if args.bf16:
        model = model.to(memory_format=torch.channels_last)

    def amp() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    report: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(device),
        "parameters": count_parameters(model),
        "results": [],
    }
    for batch in args.batch:
        report["results"].append(bench_batch(model, args, batch, device, amp))
        print(f"[bench] batch {batch} done", file=sys.stderr, flush=True)
    report["environment"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["environment"]["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(markdown(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
