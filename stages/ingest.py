"""Stage `ingest`: data/raw/synthea (Synthea CSV, or a MEDS dataset: docs/meds.md) →
data/interim/{events,patients,dropped_rows}.parquet."""

import logging
import time
from pathlib import Path

from ehrseq.data.meds import ingest_source
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.params import load_params
from ehrseq.plots import histogram

RAW = Path("data/raw/synthea")
OUT = Path("data/interim")


def main() -> None:
    params = load_params()
    t0 = time.time()
    with atomic_outputs(OUT) as (tmp,):
        tmp.mkdir()
        res = ingest_source(RAW, tmp, on_bad_rows=params.data.on_bad_rows)  # CSV or MEDS
    metrics = {
        "patients": res.patients,
        "events": res.events,
        **{f"events_{k}": n for k, n in res.events_by_kind.items()},
        "dropped_rows": sum(res.dropped.values()),
        **{f"dropped.{k}": n for k, n in res.dropped.items()},
        "first_year": int(res.first_time[:4]),
        "last_year": int(res.last_time[:4]),
        "end_of_record": res.end_of_record,
        **res.known_later,
    }
    write_json("metrics/ingest.json", metrics)
    histogram(res.events_per_patient, "plots/ingest/events_per_patient",
              "Events per patient", "events", log_x=True)
    print(f"ingest: {res.patients} patients, {res.events} events, "
          f"{metrics['dropped_rows']} rows dropped in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
