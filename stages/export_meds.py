"""Stage ``export_meds``: the cohort as a MEDS 0.4 dataset (docs/meds.md).

``python stages/export_meds.py dataset``: data/interim + the sequences splits → data/meds (data/
shards, metadata/ with codes, dataset.json, subject_splits and the subject id map) with task
labels in data/meds/task_labels (one task per horizon of ``outcome.name``, prediction times at
our landmarks). ``python stages/export_meds.py predictions``: each model's test survival
predictions under data/predictions → data/meds_predictions/<task>/<model>.parquet, the format
meds-evaluation reads. Writes metrics/export_meds[_predictions].json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ehrseq.data.meds import TASK_LABELS, write_labels, write_meds, write_predictions
from ehrseq.data.runs import CROSSFIT, CURVE
from ehrseq.io import InputError, atomic_outputs, flat_metrics, run_stage, write_json
from ehrseq.params import load_params

INTERIM = Path("data/interim")
SPLITS = Path("data/processed/sequences/patients.parquet")
OUTCOMES = Path("data/processed/outcomes")
OUT = Path("data/meds")
PRED_OUT = Path("data/meds_predictions")
PREDICTIONS = Path("data/predictions")


def horizons() -> list[float]:
    """The evaluation horizons the outcomes stage used (its time_bins.json)."""
    return [float(h) for h in json.loads((OUTCOMES / "time_bins.json").read_text())["horizons"]]


def dataset() -> None:
    outcome = load_params().outcome.name
    t0 = time.perf_counter()
    with atomic_outputs(OUT) as (tmp,):
        info = write_meds(INTERIM, tmp, splits=SPLITS)
        tasks = write_labels(OUTCOMES / "outcomes.parquet", horizons(), tmp / TASK_LABELS, tmp,
                             outcome=outcome)
    write_json("metrics/export_meds.json", flat_metrics({
        "subjects": info["subjects"], "rows": info["rows"], "codes": info["codes"],
        "shards": len(info["shards"]), "tasks": tasks}))
    print(f"export_meds: {info['subjects']} subjects, {info['rows']} rows, {len(tasks)} tasks "
          f"in {time.perf_counter() - t0:.1f} s")


def survival_predictions() -> dict[str, Path]:
    """Model name → its test survival predictions (npz with index, landmark_visits, surv,
    times) under data/predictions; multi-label files (trajectory) are not survival tasks."""
    import numpy as np

    found: dict[str, Path] = {}
    for f in sorted(PREDICTIONS.rglob("*.npz")):
        if f.relative_to(PREDICTIONS).parts[0] in (CURVE, CROSSFIT):   # curve points and
            continue                              # cross-fitting folds: not the test models
        with np.load(f, allow_pickle=False) as z:
            if not {"index", "surv", "times"} <= set(z.files):  # landmark_visits: checked later
                continue
        if f.stem in found:
            raise InputError(f"{f}: model name {f.stem!r} is also {found[f.stem]}")
        found[f.stem] = f
    return found


def predictions() -> None:
    from ehrseq.evaluate.scoring import check_present, prediction_outputs

    outcome = load_params().outcome.name
    # every prediction output of the DAG on disk first: DVC cannot pull a directory dependency
    # that spans several stages' outputs (treeverse/dvc#11099), and exporting without them
    # would write an empty data/meds_predictions
    check_present(prediction_outputs(PREDICTIONS))
    surv = survival_predictions()
    counts = write_predictions(surv, OUTCOMES / "outcomes.parquet", horizons(), PRED_OUT, OUT,
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
