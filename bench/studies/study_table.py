"""The table of a fixed-budget study (bench/studies/objective_study.sh): one markdown row per run, from its training log
and, where it was evaluated, its evaluation CSVs.

Columns: iterations and iterations/s (training time only: the budget's elapsed seconds less the validations inside
it), then the Dice, anchor Dice, swapped-condition Dice and image reliance of the evaluation
(``runs/study_<name>/eval``: the 10-sample ensemble) or, for runs scored by training's last validation (hippocampus),
of that validation (one DDIM-10 sample).

    python bench/studies/study_table.py --logs bundle/runs/study_logs x0_concat paper hippocampus_paper ...
"""

from __future__ import annotations

import csv
import re
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for its shared set-up

from common import BUNDLE, arg_parser  # noqa: E402

BUDGET = re.compile(r"time budget of \S+ s reached after (\d+) s \(epoch (\d+), iteration (\d+)\)")
VALIDATION = re.compile(r"SupervisedEvaluator - INFO - Epoch\[\d+\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
METRICS = re.compile(r"Metrics -- (.*)")
KEYS = ("val_mean_dice", "val_anchor_dice", "val_swapped_dice", "val_image_reliance")


def training_speed(log: str) -> tuple[int, float]:
    """(iterations, iterations per second of training) from a training log stopped by its time budget."""
    budget = BUDGET.search(log)
    if budget is None:
        raise ValueError("no 'time budget ... reached' line: the run did not finish")
    elapsed, iterations = int(budget.group(1)), int(budget.group(3))
    before = log[: budget.start()]
    validating = sum(
        timedelta(hours=int(h), minutes=int(m), seconds=float(s)).total_seconds()
        for h, m, s in VALIDATION.findall(before)
    )
    return iterations, iterations / (elapsed - validating)


def last_validation(log: str) -> dict[str, float]:
    found = METRICS.findall(log)
    if not found:
        raise ValueError("no validation metrics in the log")
    pairs = re.findall(r"(\w+): ([-\d.]+)", found[-1])
    return {k: float(v) for k, v in pairs}


def evaluation(runs: Path, run: str) -> dict[str, float] | None:
    path = runs / f"study_{run}" / "eval" / "metrics.csv"
    if not path.is_file():
        return None
    with open(path) as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--logs", type=Path, required=True, help="the study's R folder (<run>.train.log)")
    ap.add_argument("--runs_dir", type=Path, default=BUNDLE / "runs", help="the bundle's runs/ folder")
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    print("| run | iterations | it/s | scored by | Dice | anchor Dice | Dice, swapped condition | image reliance |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for run in args.runs:
        log = (args.logs / f"{run}.train.log").read_text(errors="replace")
        iterations, speed = training_speed(log)
        scores, source = evaluation(args.runs_dir, run), "10-sample ensemble"
        if scores is None:
            scores, source = last_validation(log), "last validation, 1 sample"
        values = " | ".join(f"{scores[k]:.3f}" if k in scores else "-" for k in KEYS)
        print(f"| {run} | {iterations} | {speed:.2f} | {source} | {values} |")


if __name__ == "__main__":
    main()
