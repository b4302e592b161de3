"""Stage `corpus`: the pre-training corpus (``pretrain.corpus``) → data/corpus/.

``null`` (the default): no corpus; data/corpus/ holds only ``corpus.json`` saying so, and
pre-training reads the labelled cohort's training patients, as before. Otherwise the corpus is
made like the labelled cohort (``source: generate``: ``patients`` generated with its own
``seed`` and ``data.reference_date``/``state``/``city``, on ``runtime.cluster`` when set; or a
Synthea CSV export, FHIR bundles or a MEDS root) and flattened by the ingest stage's reader into
data/corpus/{events,patients}.parquet. The sequences stage encodes it with the labelled
cohort's vocabulary (fitted on the training split and the corpus) and refuses a corpus patient
of the labelled validation or test split. The raw files are not kept (a temporary folder).
Writes metrics/corpus.json."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from ehrseq.data.meds import ingest_source
from ehrseq.data.synthesize import generate_cohort, import_source
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.params import load_params

OUT = Path("data/corpus")
METRICS = Path("metrics/corpus.json")


def main() -> None:
    params = load_params()
    c, data = params.pretrain.corpus, params.data
    started = time.perf_counter()
    with atomic_outputs(OUT) as (out,):
        out.mkdir()
        if c is None:
            info = {"source": None, "patients": 0, "events": 0}
        else:
            with tempfile.TemporaryDirectory(prefix="ehrseq-corpus-") as raw:
                if c.source == "generate":
                    generate_cohort(raw, c.patients, c.seed, data.reference_date, data.state,
                                    data.city, data.workers, cluster=params.runtime.cluster)
                else:
                    import_source(c.source, raw, workers=data.workers)
                res = ingest_source(raw, out, on_bad_rows=data.on_bad_rows)
            info = {"source": c.source, "patients": res.patients, "events": res.events,
                    "dropped_rows": sum(res.dropped.values())}
        (out / "corpus.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    write_json(METRICS, info)
    print(f"corpus: {info['patients']} patients, {info['events']} events in "
          f"{time.perf_counter() - started:.0f} s" if c else
          "corpus: none (pretrain.corpus: null; pre-training reads the training split)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
