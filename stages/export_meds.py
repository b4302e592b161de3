"""Stage ``export_meds``: the cohort as a MEDS 0.4 dataset (docs/meds.md).

``python stages/export_meds.py dataset``: data/interim + the sequences splits → data/meds (data/
shards, metadata/ with codes, dataset.json, subject_splits and the subject id map) with task
labels in data/meds/task_labels (one task per horizon of ``outcome.name``, prediction times at
our landmarks). ``python stages/export_meds.py predictions``: each model's test survival
predictions under data/predictions → data/meds_predictions/<task>/<model>.parquet, the format
meds-evaluation reads. Writes metrics/export_meds[_predictions].json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ehrseq.data.meds import TASK_LABELS, write_labels, write_meds, write_predictions
from ehrseq.data.task import read_bins
from ehrseq.io import atomic_outputs, flat_metrics, run_stage, write_json
from ehrseq.params import load_params

INTERIM = Path("data/interim")
SPLITS = Path("data/processed/sequences/patients.parquet")
OUTCOMES = Path("data/processed/outcomes")
OUT = Path("data/meds")
PRED_OUT = Path("data/meds_predictions")


def dataset() -> None:
    outcome = load_params().outcome.name
    horizons = read_bins(OUTCOMES)[1]
    t0 = time.perf_counter()
    with atomic_outputs(OUT) as (tmp,):
        info = write_meds(INTERIM, tmp, splits=SPLITS)
        tasks = write_labels(OUTCOMES / "outcomes.parquet", horizons, tmp / TASK_LABELS, tmp,
                             outcome=outcome)
    write_json("metrics/export_meds.json", flat_metrics({
        "subjects": info["subjects"], "rows": info["rows"], "codes": info["codes"],
        "shards": len(info["shards"]), "tasks": tasks}))
    print(f"export_meds: {info['subjects']} subjects, {info['rows']} rows, {len(tasks)} tasks "
          f"in {time.perf_counter() - t0:.1f} s")


def predictions() -> None:
    from ehrseq.evaluate.scoring import PREDICTIONS, find_predictions, prediction_outputs

    outcome = load_params().outcome.name
    horizons = read_bins(OUTCOMES)[1]
    surv, _ = find_predictions(PREDICTIONS, only=prediction_outputs(PREDICTIONS))
    counts = write_predictions(surv, OUTCOMES / "outcomes.parquet", horizons, PRED_OUT, OUT,
                               outcome=outcome)
    write_json("metrics/export_meds_predictions.json", flat_metrics({"rows": counts}))
    print(f"export_meds predictions: {len(surv)} models x {len(counts)} tasks")


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "dataset"
    if what not in ("dataset", "predictions"):
        raise SystemExit(f"usage: python stages/export_meds.py [dataset|predictions]; got {what}")
    dataset() if what == "dataset" else predictions()


if __name__ == "__main__":
    run_stage(main)
