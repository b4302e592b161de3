"""docs/tools/trend_input.py: the LSTM's change input at the last SBP token against the
positive control's planted trend."""

import numpy as np
import pandas as pd
import pytest
from conftest import script

from ehrseq.data.tensors import Sequences


def test_change_input_matches_the_planted_trend(tmp_path):
    tool = script("docs/tools/trend_input.py")
    sbp = [f"LOINC/8480-6:q{i}" for i in range(5)]
    bmi = [f"LOINC/39156-5:q{i}" for i in range(5)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sbp, *bmi, "SNOMED/1"]
    tid = {t: i for i, t in enumerate(tokens)}
    # SBP bins per visit of each patient (None: a visit without one); the value is the bin
    visits = [[1, None, 3], [3, 1], [2, 2], [4], [0, 4, 1]]
    codes, values, vo, po = [], [], [0], [0]
    for p in visits:
        for q in p:
            row = [tid["SNOMED/1"], tid[bmi[2]]] + ([tid[sbp[q]]] if q is not None else [])
            codes += row
            values += [np.nan, 2.0] + ([float(q)] if q is not None else [])
            vo.append(len(codes))
        po.append(len(vo) - 1)
    n = len(visits)
    seqs = Sequences(
        codes=np.array(codes, np.int32), visit_offsets=np.array(vo),
        patient_offsets=np.array(po), visit_time=np.arange(len(vo) - 1) * 30.0,
        visit_age=np.full(len(vo) - 1, 50.0, np.float32),
        patients=pd.DataFrame({"patient": [f"p{i}" for i in range(n)], "split": "test",
                               "n_visits": [len(p) for p in visits]}),
        vocab={"tokens": tokens, "counts": [0] * len(tokens),
               "specials": {t: i for i, t in enumerate(tokens[:5])}},
        values=np.array(values, np.float32),
        value_stats={"codes": ["LOINC/39156-5", "LOINC/8480-6"], "mean": [0, 0], "sd": [1, 1]})
    seqs.save(tmp_path / "data/processed/sequences")
    (tmp_path / "data/processed/outcomes").mkdir(parents=True)
    nv = np.array([len(p) for p in visits])
    pd.DataFrame({"patient": [f"p{i}" for i in range(n)], "index": np.arange(n),
                  "split": ["test"] * (n - 1) + ["train"],
                  "landmark_time": (np.array(po[1:]) - 1) * 30.0, "landmark_visits": nv,
                  "input_visits": nv}).to_parquet(
        tmp_path / "data/processed/outcomes/outcomes.parquet")
    r = tool.trend_input(tmp_path)
    # trends of the test rows: 3 - 1, 1 - 3, 0, 0 (one reading): the change input equals them
    assert r["landmarks"] == 4 and r["two_readings"] == pytest.approx(0.75)
    assert r["trend_nonzero"] == pytest.approx(0.5) and r["r"] == pytest.approx(1.0)
