"""Stage `embed`: one patient embedding at the landmark per method in `embed.methods`, for every
outcome-eligible patient (all splits), from the model inputs only (docs/subtypes.md).

Writes data/processed/embeddings/<method>.npz (patient, index, split, X [n, d], rows in the
order of outcomes.parquet) and metrics/embed.json.
"""

import logging
import time
from pathlib import Path

from ehrseq.data.task import SurvivalTask
from ehrseq.evaluate.embed import PatientEmbedding, embed
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.params import load_params

OUT = Path("data/processed/embeddings")
log = logging.getLogger("embed")






def main() -> None:
    p = load_params().embed
    task = SurvivalTask.load()
    metrics: dict = {"n_patients": len(task.table)}
    with atomic_outputs(OUT) as (out,):
        out.mkdir()
        for name in p.methods:
            t0 = time.perf_counter()
            x = embed(name, task, p)
            PatientEmbedding.from_task(task, x).save(out / f"{name}.npz")
            metrics[f"{name}.dim"] = x.shape[1]
            metrics[f"{name}.seconds"] = round(time.perf_counter() - t0, 3)
            log.info("%s: %d patients x %d dims in %.1f s", name, *x.shape,
                     metrics[f"{name}.seconds"])
    write_json("metrics/embed.json", metrics)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
