"""Seconds per training iteration of `monai.bundle run` trainings, read from their TensorBoard logs.

The bundle logs ``train_loss`` once per iteration with its wall time, so the gaps between consecutive iterations are
the iterations' costs (a gap that holds a validation or a checkpoint is an outlier; the median ignores it). With
``--overlap`` only the iterations inside the wall-clock window that all the given runs share are counted, so runs made
side by side on one machine compare under the same load. The last column is each run's median over the last run's
(put the baseline last).

    python bench/iteration_times.py bundle/runs/same_budget_isic128_v2 bundle/runs/same_budget_isic128_unet --overlap
"""

from __future__ import annotations

import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common import arg_parser


def iteration_times(run_dir: Path, tag: str = "train_loss") -> list[tuple[float, int]]:
    """(wall time, iteration) of every logged training iteration of a run, from all its event files, in order."""
    files = sorted((run_dir / "logs").glob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{run_dir / 'logs'}: no TensorBoard event files")
    points: dict[int, float] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points.update({e.step: e.wall_time for e in acc.Scalars(tag)})  # a resumed run repeats no iteration
    if not points:
        raise ValueError(f"{run_dir}: no {tag!r} scalars in its event files")
    return sorted((t, step) for step, t in points.items())


def gaps(points: list[tuple[float, int]], start: float, end: float) -> list[float]:
    """Seconds between consecutive iterations that both fall in [start, end]."""
    inside = [(t, s) for t, s in points if start <= t <= end]
    return [t1 - t0 for (t0, s0), (t1, s1) in zip(inside, inside[1:], strict=False) if s1 == s0 + 1]


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (each with logs/events.out.tfevents.*)")
    ap.add_argument("--overlap", action="store_true", help="count only the wall-clock window all runs share")
    args = ap.parse_args()
    series = {run: iteration_times(run) for run in args.runs}
    start, end = float("-inf"), float("inf")
    if args.overlap:
        start = max(p[0][0] for p in series.values())
        end = min(p[-1][0] for p in series.values())
        if end <= start:
            raise SystemExit("the runs' wall-clock windows do not overlap")
        print(f"shared window: {end - start:.0f} s")
    print("| run | iterations | median s/it | mean s/it (gaps < 5x median) | median / last run's |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for run, points in series.items():
        g = gaps(points, start, end)
        if not g:
            raise SystemExit(f"{run}: no consecutive iterations in the window")
        med = statistics.median(g)
        rows.append((run.name, len(g) + 1, med, statistics.fmean(x for x in g if x < 5 * med)))
    for name, n, med, mean in rows:
        print(f"| {name} | {n} | {med:.3f} | {mean:.3f} | {med / rows[-1][2]:.2f}x |")


if __name__ == "__main__":
    main()
