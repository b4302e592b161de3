import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from conftest import export_dir

from ehrseq.data.ingest import ingest
from ehrseq.data.sequences import SPECIALS, build_sequences, split_of
from ehrseq.params import SequencesParams


@pytest.fixture(scope="module")
def interim(tmp_path_factory):
    out = tmp_path_factory.mktemp("interim")
    ingest(export_dir("unmc-v3.2"), out)
    return out


def load(d):
    arrays = {k: np.load(d / f"{k}.npy") for k in
              ("codes", "visit_offsets", "patient_offsets", "visit_time", "visit_age")}
    return arrays, json.loads((d / "vocab.json").read_text()), pd.read_parquet(d / "patients.parquet")


def test_arrays_are_consistent(interim, tmp_path):
    res = build_sequences(interim, tmp_path, SequencesParams())
    a, vocab, pats = load(tmp_path)
    vo, po = a["visit_offsets"], a["patient_offsets"]
    assert vo[0] == 0 and vo[-1] == len(a["codes"]) and np.all(np.diff(vo) > 0)
    assert po[0] == 0 and po[-1] == len(vo) - 1 and len(po) == len(pats) + 1
    assert len(a["visit_time"]) == len(a["visit_age"]) == len(vo) - 1
    for p in range(len(pats)):  # visits in time order within each patient
        assert np.all(np.diff(a["visit_time"][po[p]:po[p + 1]]) >= 0)
    assert a["codes"].max() < len(vocab["tokens"]) and a["codes"].min() >= 1
    assert vocab["tokens"][:len(SPECIALS)] == list(SPECIALS)
    assert (pats["n_visits"].to_numpy() == np.diff(po)).all()
    assert res.metrics["visits"] == len(vo) - 1
    assert 0 <= a["visit_age"].min() and a["visit_age"].max() < 120


def test_visits_group_events_by_encounter(interim, tmp_path):
    build_sequences(interim, tmp_path, SequencesParams(min_count=1))
    a, vocab, pats = load(tmp_path)
    ev = pd.read_parquet(interim / "events.parquet")
    ev = ev[ev["kind"].isin(SequencesParams().event_kinds)]
    p0 = pats["patient"].iloc[0]
    mine = ev[ev["patient"] == p0]
    n_visits = mine["encounter"].nunique() + mine.loc[mine["encounter"].isna(), "time"].dt.date.nunique()
    assert pats["n_visits"].iloc[0] == n_visits
    # every token of the patient's first visit is one of its first encounter's events
    first_enc = mine.sort_values("time")["encounter"].dropna().iloc[0]
    enc = mine[mine["encounter"] == first_enc]
    expected = set(enc["system"] + "/" + enc["code"])
    tokens = {vocab["tokens"][c] for c in a["codes"][a["visit_offsets"][0]:a["visit_offsets"][1]]}
    assert tokens <= expected | {"[UNK]"}


def test_vocabulary_from_training_split_only(interim, tmp_path):
    build_sequences(interim, tmp_path, SequencesParams(min_count=1))
    _, vocab, pats = load(tmp_path)
    ev = pd.read_parquet(interim / "events.parquet").merge(pats[["patient", "split"]])
    ev = ev[ev["kind"].isin(SequencesParams().event_kinds)]
    tok = ev["system"] + "/" + ev["code"]
    train_tokens = set(tok[ev["split"] == "train"])
    only_held_out = set(tok) - train_tokens
    assert only_held_out, "test data should have tokens unseen in training"
    assert not only_held_out & set(vocab["tokens"])
    assert set(vocab["tokens"][len(SPECIALS):]) == train_tokens


def test_splits_stable_when_cohort_grows():
    ids = [f"patient-{i}" for i in range(2000)]
    full = split_of(ids, (0.7, 0.15, 0.15), "s")
    part = split_of(ids[:500], (0.7, 0.15, 0.15), "s")
    assert (full[:500] == part).all()
    frac = {s: (full == s).mean() for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.7) < 0.04 and abs(frac["test"] - 0.15) < 0.03
    assert (split_of(ids, (0.7, 0.15, 0.15), "other") != full).any()


def test_truncation_keeps_most_recent(interim, tmp_path):
    full, short = tmp_path / "full", tmp_path / "short"
    build_sequences(interim, full, SequencesParams())
    build_sequences(interim, short, SequencesParams(max_visits=5, max_codes_per_visit=3))
    af, _, pf = load(full)
    as_, _, ps = load(short)
    assert ps["n_visits"].max() == 5
    assert np.diff(as_["visit_offsets"]).max() <= 3
    p = int(np.argmax(pf["n_visits"]))
    last5 = af["visit_time"][af["patient_offsets"][p + 1] - 5:af["patient_offsets"][p + 1]]
    got = as_["visit_time"][as_["patient_offsets"][p]:as_["patient_offsets"][p + 1]]
    assert np.array_equal(last5, got)


def test_numeric_observation_bins(tmp_path):
    interim = tmp_path / "interim"
    interim.mkdir()
    ingest(export_dir("dbt-synthea-v3.0"), interim)
    build_sequences(interim, tmp_path / "s", SequencesParams(numeric_bins=4, min_count=1))
    tokens = json.loads((tmp_path / "s/vocab.json").read_text())["tokens"]
    binned = [t for t in tokens if t.startswith("LOINC/8302-2:q")]
    assert sorted(binned) == [f"LOINC/8302-2:q{i}" for i in range(4)]


def test_deterministic(interim, tmp_path):
    def digest(d):
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}
    build_sequences(interim, tmp_path / "a", SequencesParams(numeric_bins=3))
    build_sequences(interim, tmp_path / "b", SequencesParams(numeric_bins=3))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")



def test_patient_ranges_do_not_change_the_output(interim, tmp_path):
    """The stage builds visits and tokens for ``chunk`` patients at a time (bounded working
    set and spill at 100,000 patients); ranges of 7 patients, or one per patient, give the same
    bytes as one range for the whole cohort (vocabulary counts summed over ranges, visits
    numbered across them)."""
    def digest(d):
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}
    p = SequencesParams(numeric_bins=3)
    whole = build_sequences(interim, tmp_path / "whole", p).metrics
    for chunk in (7, 1):
        assert build_sequences(interim, tmp_path / f"c{chunk}", p, chunk=chunk).metrics == whole
        assert digest(tmp_path / f"c{chunk}") == digest(tmp_path / "whole")


def test_numeric_values_normalised_per_code_on_train(tmp_path):
    """values.npy: each numeric observation's value (as float32) as a z-score of its code's
    training-split values (clipped), the visit's median where a code repeats in a visit; NaN
    for every other token. Recomputed here from the events with pandas."""
    from ehrseq.data.sequences import VALUE_CLIP
    from ehrseq.data.tensors import Sequences

    interim = tmp_path / "interim"
    interim.mkdir()
    ingest(export_dir("dbt-synthea-v3.0"), interim)
    out = tmp_path / "s"
    res = build_sequences(interim, out, SequencesParams(numeric_bins=0, min_count=1))
    seqs = Sequences.load(out)
    tokens = np.array(seqs.vocab["tokens"])
    values = seqs.values
    assert values.dtype == np.float32 and len(values) == len(seqs.codes)
    assert res.metrics["tokens_with_value"] == int(np.isfinite(values).sum()) > 0
    assert np.nanmax(np.abs(values)) <= VALUE_CLIP
    ev = pd.read_parquet(interim / "events.parquet")
    num = ev[(ev["kind"] == "observation") & ev["value"].notna()].copy()
    num["value"] = num["value"].astype(np.float32).astype(np.float64)
    numeric_tokens = set(num["system"] + "/" + num["code"])
    has_value = np.isfinite(values)
    assert set(tokens[seqs.codes[has_value]]) <= numeric_tokens
    # one code, recomputed: z against the training split's mean and population SD
    code = num["code"].value_counts().index[0]
    split = dict(zip(seqs.patients["patient"], seqs.patients["split"], strict=True))
    c = num[num["code"] == code]
    train = c[c["patient"].map(split) == "train"]["value"]
    mu, sd = train.mean(), train.std(ddof=0)
    assert sd > 0
    once = c[c["encounter"].notna()].groupby(["patient", "encounter"])["value"].agg(["median"])
    visits = pd.read_parquet(out / "visits.parquet").reset_index(names="visit")
    j = once.reset_index().merge(visits, left_on=["patient", "encounter"],
                                 right_on=["patient", "visit_key"])
    assert len(j) > 10
    tid = seqs.vocab["tokens"].index(f"LOINC/{code}")
    checked = 0
    for v, mean_v in zip(j["visit"], j["median"], strict=True):   # test-side loop
        lo, hi = seqs.visit_offsets[v], seqs.visit_offsets[v + 1]
        at = lo + np.flatnonzero(seqs.codes[lo:hi] == tid)
        if len(at):
            want = np.clip((mean_v - mu) / sd, -VALUE_CLIP, VALUE_CLIP)
            assert values[at[0]] == pytest.approx(want, abs=1e-4)
            checked += 1
    assert checked > 10
