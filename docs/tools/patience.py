"""Replay recorded training curves under other early-stopping patiences: which epoch each
training would have kept, its validation loss, and how many epochs it would have run.

    python docs/tools/patience.py [ROOT ...] [--patience 3 4 5] [--recorded 8]

Reads every ``plots/**/val_loss.tsv`` (dvclive's per-epoch validation loss, one per training
and learning rate) under each ROOT (default: this checkout). The replay is exact for any
patience below the one the curves were recorded with (``--recorded``, the params' value then):
a run stopped earlier sees the same epochs up to its stop (the learning-rate schedule is fixed
by ``train.epochs``, not by the stop). Trainings that ran every epoch are counted too.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from ehrseq.train.schedule import EarlyStopping  # noqa: E402


def stop(losses: list[float], patience: int, min_delta: float = 1e-4) -> tuple[int, float, int]:
    """(kept epoch, its loss, epochs run) under the training loop's own EarlyStopping."""
    stopper = EarlyStopping(patience, min_delta)
    for epoch, loss in enumerate(losses):
        stopper.update(loss, epoch)
        if stopper.should_stop:
            return stopper.best_epoch, stopper.best, epoch + 1
    return stopper.best_epoch, stopper.best, len(losses)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="*", type=Path, default=[Path(".")])
    ap.add_argument("--patience", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--recorded", type=int, default=8)
    ap.add_argument("--min-delta", type=float, default=1e-4)
    a = ap.parse_args(argv)
    bad = [p for p in a.patience if not 1 <= p <= a.recorded]
    if bad:
        raise SystemExit(f"--patience: {bad}: the replay is exact only from 1 to --recorded "
                         f"({a.recorded})")
    curves = {}
    for root in a.roots:
        for f in sorted(root.glob("plots/**/val_loss.tsv")):
            with open(f, newline="") as fh:
                curves[f] = [float(r["val_loss"]) for r in csv.DictReader(fh, delimiter="\t")]
    if not curves:
        raise SystemExit(f"no plots/**/val_loss.tsv under {[str(r) for r in a.roots]}")
    ref = {f: stop(c, a.recorded, a.min_delta) for f, c in curves.items()}
    print(f"{len(curves)} trainings; at patience {a.recorded}: "
          f"{sum(r[2] for r in ref.values())} epochs run")
    print("| patience | same epoch kept | epochs run (vs recorded) | worst val-loss increase |")
    print("|---|---|---|---|")
    for p in a.patience:
        got = {f: stop(c, p, a.min_delta) for f, c in curves.items()}
        same = sum(got[f][0] == ref[f][0] for f in curves)
        run = sum(g[2] for g in got.values())
        worst = max(got[f][1] - ref[f][1] for f in curves)
        print(f"| {p} | {same} of {len(curves)} | {run} ({run / sum(r[2] for r in ref.values()):.0%})"
              f" | {worst:+.4f} |")
        for f in curves:
            if got[f][0] != ref[f][0]:
                print(f"|   | {f}: epoch {got[f][0]} instead of {ref[f][0]} | | "
                      f"{got[f][1] - ref[f][1]:+.4f} |")


if __name__ == "__main__":
    main()
