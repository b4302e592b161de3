"""Does the LSTM's input carry the positive control's lab trend? From a finished run of the
``sequential`` scenario: on its test landmarks, the planted ``sbp_trend`` feature (the last
systolic blood pressure bin in the input window minus the one before,
src/ehrseq/outcomes/synthetic.py) against the input ``model.lstm.value_deltas`` gives the
LSTM at the window's last SBP token (its normalised value minus the previous one's,
:meth:`ehrseq.data.tensors.Batch.value_deltas`): their Pearson correlation, and how many
windows hold two SBP readings.

    python docs/tools/trend_input.py RUN_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ehrseq.data.tensors import Sequences, build_batch, value_code_ids
from ehrseq.outcomes.landmarks import Landmarks
from ehrseq.outcomes.synthetic import SBP, sequential_effects


def trend_input(run: Path, split: str = "test") -> dict:
    s = Sequences.load(run / "data/processed/sequences")
    o = pd.read_parquet(run / "data/processed/outcomes/outcomes.parquet")
    o = o[o["split"] == split]
    lm = Landmarks(o["index"].to_numpy(), o["landmark_time"].to_numpy(),
                   o["landmark_visits"].to_numpy(), {}, o["input_visits"].to_numpy())
    trend = sequential_effects(s, lm)[0][:, 1]
    b = build_batch(s, lm.index, lm.landmark_visits, max_visits=lm.input_visits)
    delta = b.value_deltas(torch.from_numpy(value_code_ids(s))).numpy()
    sbp = np.array([t.startswith(f"LOINC/{SBP}:q") for t in s.vocab["tokens"]])
    at = np.flatnonzero(sbp[b.tokens.numpy()])          # SBP tokens, in time order per row
    row = (np.repeat(np.arange(b.visit_counts.numel()), b.visit_counts.reshape(-1).numpy())
           // b.visit_mask.shape[1])[at]
    end = np.r_[row[1:] != row[:-1], True] if len(row) else np.zeros(0, bool)
    last = np.zeros(len(o))
    last[row[end]] = delta[at[end]]                     # each row's last SBP token
    n = np.bincount(row, minlength=len(o))
    return {"landmarks": len(o), "two_readings": float((n >= 2).mean()),
            "trend_nonzero": float((trend != 0).mean()),
            "r": float(np.corrcoef(last, trend)[0, 1])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    a = ap.parse_args(argv)
    r = trend_input(a.run)
    print(f"{r['landmarks']} test landmarks; {r['two_readings']:.1%} hold two or more SBP "
          f"readings in their window; the planted trend is non-zero in {r['trend_nonzero']:.1%}; "
          f"Pearson r between it and the LSTM's change input at the last SBP token: "
          f"{r['r']:.3f}")


if __name__ == "__main__":
    main()
