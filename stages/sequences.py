"""Stage `sequences`: events → visits, tokens, vocabulary, splits and tensor-ready arrays; with a
pre-training corpus (stage `corpus`), its arrays too, in data/processed/sequences/corpus."""

import logging
import time
from pathlib import Path

from ehrseq.data.sequences import build_sequences
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.params import load_params
from ehrseq.plots import histogram

OUT = Path("data/processed/sequences")
CORPUS = Path("data/corpus")   # the corpus stage's output (no events.parquet: no corpus)


def main() -> None:
    params = load_params()
    t0 = time.time()
    with atomic_outputs(OUT) as (tmp,):
        res = build_sequences("data/interim", tmp, params.sequences, corpus=CORPUS)
    write_json("metrics/sequences.json", res.metrics)
    histogram(res.visits_per_patient, "plots/sequences/visits_per_patient",
              "Visits per patient (after truncation)", "visits")
    m = res.metrics
    print(f"sequences: {m['patients']} patients, {m['visits']} visits, {m['tokens']} tokens, "
          f"vocab {m['vocab_size']}"
          + (f"; corpus {m['corpus.patients']} patients" if "corpus.patients" in m else "")
          + f" in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
