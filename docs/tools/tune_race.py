"""Replay recorded tuned trainings as a race (``tune.race_epochs``): which learning rate a race
of K epochs keeps, how many epochs it saves, and what the kept validation loss costs.

    python docs/tools/tune_race.py [ROOT ...] [--race 1 2 3 4 5] [--patience 5]

Reads every pair ``plots/**/lr_<a>/plots/metrics/val_loss.tsv`` / ``lr_<b>/...`` (dvclive's
per-epoch validation loss of the two learning rates of one tuned training) under each ROOT
(default: this checkout; a training found twice with the same curves counts once), replays
each curve under the training loop's own early stopping at ``--patience``
(docs/tools/patience.py), and compares the full tuning (every lr to its stop, the
lowest best loss kept) with a race (every lr K epochs, the lowest so far trains on). The replay
is exact: the race's winner resumes bit-identically (tests/test_tune.py), so its curve is the
recorded one.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patience import stop  # noqa: E402


def tuned_curves(roots: list[Path]) -> dict[Path, list[list[float]]]:
    """{training folder: [val-loss curve per lr, in lr order]} for every tuned training."""
    runs: dict[Path, dict[float, list[float]]] = {}
    for root in roots:
        for f in sorted(root.glob("plots/**/lr_*/plots/metrics/val_loss.tsv")):
            lr_dir = f.parents[2]
            with open(f, newline="") as fh:
                curve = [float(r["val_loss"]) for r in csv.DictReader(fh, delimiter="\t")]
            runs.setdefault(lr_dir.parent, {})[float(lr_dir.name[3:])] = curve
    out, seen = {}, set()
    for k, v in runs.items():
        curves = [v[lr] for lr in sorted(v)]
        key = repr(curves)   # the same run checked out in two roots counts once
        if len(v) > 1 and key not in seen:
            seen.add(key)
            out[k] = curves
    return out


def replay(curves: list[list[float]], race: int, patience: int) -> tuple[bool, int, int, float]:
    """(same lr kept as the full tuning, epochs run by the race, by the full tuning, kept
    validation loss minus the full tuning's)."""
    res = [stop(c, patience) for c in curves]
    full = min(range(len(curves)), key=lambda i: res[i][1])
    raced = min(range(len(curves)), key=lambda i: min(curves[i][:race]))
    run = sum(min(race, r[2]) for r in res) - min(race, res[raced][2]) + res[raced][2]
    return raced == full, run, sum(r[2] for r in res), res[raced][1] - res[full][1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="*", type=Path, default=[Path(".")])
    ap.add_argument("--race", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--patience", type=int, default=5)
    a = ap.parse_args(argv)
    runs = tuned_curves(a.roots)
    if not runs:
        raise SystemExit(f"no tuned training (plots/**/lr_*/...) under {[str(r) for r in a.roots]}")
    print(f"{len(runs)} tuned trainings under {', '.join(str(r) for r in a.roots)}; "
          f"patience {a.patience}")
    print("| race epochs | same lr kept | epochs run (vs full tuning) | worst val-loss increase |")
    print("|---|---|---|---|")
    for k in a.race:
        rows = [replay(c, k, a.patience) for c in runs.values()]
        run, full = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"| {k} | {sum(r[0] for r in rows)} of {len(rows)} | {run} of {full} "
              f"({run / full:.0%}) | {max(r[3] for r in rows):+.4f} |")


if __name__ == "__main__":
    main()
