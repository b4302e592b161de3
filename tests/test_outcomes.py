"""Outcomes: landmarks (no leak past them), synthetic truth, real Synthea outcomes, time bins."""

import json
import runpy
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, ingested

from ehrseq.data.tensors import Sequences, build_batch
from ehrseq.io import InputError
from ehrseq.outcomes.build import build_outcomes
from ehrseq.outcomes.landmarks import Landmarks, choose_landmarks, days_since_epoch
from ehrseq.outcomes.synthetic import CODES, EFFECTS, named_effects, planted_subtypes
from ehrseq.params import LandmarkParams, OutcomeParams, ParamsError, SequencesParams
from ehrseq.survival.bins import time_bins


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """unmc-v3.2 (111 real Synthea patients) through ingest and sequences."""
    return ingested("unmc-v3.2", tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def synth(cohort):
    return build_outcomes(cohort / "interim", cohort / "seq", cohort / "out", OutcomeParams())


def outcomes(cohort, tmp_path, **kw):
    return build_outcomes(cohort / "interim", cohort / "seq", tmp_path / "out",
                          OutcomeParams(**kw))


def test_contract_and_landmark_visits(cohort, synth):
    t = pd.read_parquet(cohort / "out" / "outcomes.parquet")
    assert list(t.columns) == ["patient", "index", "split", "landmark_time", "landmark_visits",
                               "input_visits", "duration", "event", "subtype", "true_risk"]
    assert ((t["input_visits"] >= 1) & (t["input_visits"] <= t["landmark_visits"])).all()
    seqs = Sequences.load(cohort / "seq")
    po, vt = seqs.patient_offsets, seqs.visit_time
    assert (t["duration"] > 0).all() and set(t["event"]) <= {0, 1}
    assert t["index"].is_monotonic_increasing and t["true_risk"].notna().all()
    assert (seqs.patients["patient"].to_numpy()[t["index"]] == t["patient"]).all()
    for i, lt, k in zip(t["index"], t["landmark_time"], t["landmark_visits"], strict=True):
        v = vt[po[i]:po[i + 1]]
        assert k >= 2 and (v[:k] <= lt).all() and (v[k:] > lt).all()
        assert lt in v  # random_visit: the landmark is a visit start
    eor = seqs.patients["end_of_record"].to_numpy()[t["index"]]
    assert (t["landmark_time"] + t["duration"] <= eor + 1e-6).all()
    m = synth.metrics
    assert m["eligible"] == len(t) == sum(m[f"eligible_{s}"] for s in ("train", "val", "test"))
    assert m["patients"] - m["eligible_patients"] == sum(v for k, v in m.items()
                                                         if k.startswith("excluded_"))
    # several landmarks per patient (outcome.landmark.count): distinct visit times, in order
    per = t.groupby("index")["landmark_time"]
    assert per.size().max() == LandmarkParams().count > 1 and (per.size() > 1).mean() > 0.5
    assert per.apply(lambda s: s.is_monotonic_increasing and s.is_unique).all()
    assert t.groupby("patient")["split"].nunique().max() == 1       # splits stay by patient


def test_more_landmarks_keep_the_fewer_ones(cohort):
    seqs = Sequences.load(cohort / "seq")
    args = (seqs.visit_time, seqs.patient_offsets, seqs.patients)
    keys = {}
    for k in (1, 2, 4):
        lm = choose_landmarks(*args, LandmarkParams(count=k))
        keys[k] = set(zip(lm.index.tolist(), lm.landmark_visits.tolist(), strict=True))
        assert np.bincount(lm.index).max() == k
    assert keys[1] < keys[2] < keys[4]
    assert len({i for i, _ in keys[1]}) == len(keys[1])             # one per patient


def test_landmark_includes_every_visit_at_the_same_time():
    # patient 0: visits at 0, 10, 10, 10, 20; patient 1: one visit (too few); record ends 100
    vt = np.array([0, 10, 10, 10, 20, 5], float)
    po = np.array([0, 5, 6])
    pats = pd.DataFrame({"patient": ["a", "b"], "end_of_record": [100.0, 100.0],
                         "birth_date": pd.to_datetime(["1969-12-01", "1969-12-01"])})
    seen = set()
    for seed in range(30):
        lm = choose_landmarks(vt, po, pats, LandmarkParams(min_visits=2, seed=seed, count=1))
        assert list(lm.index) == [0] and lm.excluded["too_few_visits"] == 1
        seen.add((lm.landmark_time[0], lm.landmark_visits[0]))
    assert seen == {(10.0, 4), (20.0, 5)}
    lm = choose_landmarks(vt, po, pats, LandmarkParams(min_visits=2, count=3))
    assert list(lm.index) == [0, 0] and list(lm.landmark_visits) == [4, 5]  # both, in order
    lm = choose_landmarks(vt, po, pats, LandmarkParams(min_visits=2, min_followup_days=85))
    assert list(lm.landmark_visits) == [4] and lm.landmark_time[0] == 10.0
    lm = choose_landmarks(vt, po, pats, LandmarkParams(mode="date", date="1970-01-11"))
    assert list(lm.landmark_visits) == [4] and lm.landmark_time[0] == 10.0
    lm = choose_landmarks(vt, po, pats, LandmarkParams(mode="age", age=0.1, min_visits=1))
    assert list(lm.index) == [0, 1]
    assert np.allclose(lm.landmark_time, -31 + 0.1 * 365.25)  # born 31 days before epoch
    assert list(lm.landmark_visits) == [1, 1]
    with pytest.raises(ParamsError, match="outcome.landmark.date"):
        choose_landmarks(vt, po, pats, LandmarkParams(mode="date"))


def test_nothing_after_the_landmark_reaches_inputs_or_truth(cohort, synth, tmp_path):
    """The leak of the project this replaces: rewrite every token after a landmark (with the
    risk codes themselves) and nothing a model sees at it, nor its truth, may change. Every
    landmark of a patient is tested: after the last one, the whole table stays the same bytes;
    after the first one, the first landmarks' inputs and named-effect features (the truth
    before it is standardised over all landmarks) stay the same."""
    seqs = Sequences.load(cohort / "seq", mmap=False)
    t = synth.table
    ids = {tok: i for i, tok in enumerate(seqs.vocab["tokens"])}
    risk = np.array([ids[f"SNOMED-CT/{c}"] for g in CODES.values() for c in g
                     if f"SNOMED-CT/{c}" in ids])
    po, vo = seqs.patient_offsets, seqs.visit_offsets
    g = t.groupby("index")["landmark_visits"]
    for which, keep in (("last", g.transform("max")), ("first", g.transform("min"))):
        rows = t[t["landmark_visits"] == keep]
        after = np.zeros(len(seqs.codes), bool)
        for i, k in zip(rows["index"], rows["landmark_visits"], strict=True):  # test: loop ok
            after[vo[po[i] + k]:vo[po[i + 1]]] = True
        codes = seqs.codes.copy()
        codes[after] = np.random.default_rng(0).choice(risk, int(after.sum()))
        assert (codes != seqs.codes).any()
        changed_seqs = Sequences.load(cohort / "seq", mmap=False)
        changed_seqs.codes = codes
        out = tmp_path / which
        changed_seqs.save(out / "seq")
        shutil.copy(cohort / "seq" / "visits.parquet", out / "seq")
        res = build_outcomes(cohort / "interim", out / "seq", out / "out", OutcomeParams())
        if which == "last":
            pd.testing.assert_frame_equal(res.table, t)
        lm = Landmarks(rows["index"].to_numpy(), rows["landmark_time"].to_numpy(),
                       rows["landmark_visits"].to_numpy(),
                       input_visits=rows["input_visits"].to_numpy())
        assert (named_effects(seqs, lm)[0] == named_effects(changed_seqs, lm)[0]).all()
        before = build_batch(seqs, rows["index"], rows["landmark_visits"])
        changed = build_batch(Sequences.load(out / "seq"), rows["index"],
                              rows["landmark_visits"])
        assert all((getattr(before, f) == getattr(changed, f)).all()
                   for f in ("tokens", "bag_offsets", "visit_counts", "age", "gap_days"))


def test_oracle_cindex_and_subtypes(cohort, synth, tmp_path):
    m, t = synth.metrics, synth.table
    assert m["oracle_cindex_all"] > 0.7 and m["oracle_cindex_test"] > 0.6
    assert m["synthetic_effects_absent"] == 0 and m["synthetic_subtypes_used"] == 4
    means = t.groupby("subtype")["true_risk"].mean().to_numpy()
    assert len(means) == 4 and (np.diff(means) > 0).all()  # ids ordered by risk
    assert abs(t["true_risk"].std(ddof=0) - 1.0) < 1e-9    # signal = 1 sd of log-hazard
    noise = outcomes(cohort, tmp_path, synthetic={"signal": 0.0})
    assert noise.metrics["oracle_cindex_test"] == 0.5 and (noise.table["true_risk"] == 0).all()
    assert (noise.table["subtype"] == t["subtype"]).all()
    strong = outcomes(cohort, tmp_path, synthetic={"signal": 3.0})
    assert strong.metrics["oracle_cindex_all"] > m["oracle_cindex_all"]


def _x(**on) -> np.ndarray:
    """One named-effect feature row with the given features set."""
    return np.array([on.get(e.name, 0.0) for e in EFFECTS], float)


def test_planted_subtype_is_a_rule_on_the_named_effects():
    X = np.stack([
        _x(),                                                   # 0 none
        _x(hypertension=1),                                     # 1 cardiovascular
        _x(hypertension=1, prediabetes=1),                      # 2 0.7 > 0.4: cardiovascular
        _x(hypertension=1, diabetes=1, recent_risk_code=1),     # 3 0.8 > 0.7: metabolic
        _x(hypertension=1, anemia=1, chronic_pain=1),           # 4 0.7 = 0.4 + 0.3: first group
        _x(anemia=1, age=2.0),                                  # 5 other
        _x(chronic_sinusitis=1, age=3.0),                       # 6 not a risk group: none
        _x(hypertension=1, age=-1.5, recent_risk_code=1),       # 7 same profile as 1
    ])
    score = X @ np.array([e.beta for e in EFFECTS])
    s, names = planted_subtypes(X, 4, score)
    got = [names[i] for i in s]
    assert got == ["none", "cardiovascular", "cardiovascular", "metabolic", "cardiovascular",
                   "other", "none", "cardiovascular"]
    means = [score[s == k].mean() for k in range(len(names))]
    assert sorted(names) == ["cardiovascular", "metabolic", "none", "other"]
    assert (np.diff(means) > 0).all()                      # id 0 = the lowest mean score
    s3, n3 = planted_subtypes(X, 3, score)                 # nested: merges 4's groups
    assert [n3[i] for i in s3] == ["none", "cardiometabolic", "cardiometabolic",
                                   "cardiometabolic", "cardiometabolic", "other", "none",
                                   "cardiometabolic"]
    s2, n2 = planted_subtypes(X, 2, score)
    assert [n2[i] for i in s2] == ["none"] + ["any_risk"] * 5 + ["none", "any_risk"]
    assert (planted_subtypes(X, 1, score)[0] == 0).all()
    assert planted_subtypes(X[[0, 6]], 4, score[[0, 6]])[0].tolist() == [0, 0]  # dense ids
    with pytest.raises(ValueError, match="accepted: \\[1, 2, 3, 4\\]"):
        planted_subtypes(X, 5, score)
    with pytest.raises(Exception, match="1, 2, 3 or 4"):
        OutcomeParams(synthetic={"n_subtypes": 6})


def test_subtype_depends_on_the_named_effect_profile_only(cohort, synth, tmp_path):
    """Patients with the same named-effect profile share their subtype, and rewriting every
    other input code (not the risk codes) changes no subtype: no embedding of the token
    profile defines the truth it is scored against."""
    seqs = Sequences.load(cohort / "seq", mmap=False)
    t = synth.table
    window = {"input_visits": t["input_visits"].to_numpy()} if "input_visits" in t else {}
    lm = Landmarks(t["index"].to_numpy(), t["landmark_time"].to_numpy(),
                   t["landmark_visits"].to_numpy(), **window)
    X = named_effects(seqs, lm)[0]
    presence = [j for j, e in enumerate(EFFECTS) if e.kind == "presence"]
    profile = pd.Series([tuple(r) for r in X[:, presence]], index=t.index)
    per_profile = t.groupby(profile)["subtype"].nunique()
    assert (per_profile == 1).all() and t["subtype"].nunique() == 4
    assert profile.nunique() < len(t)     # some patients share a profile (else trivial)

    ids = {tok: i for i, tok in enumerate(seqs.vocab["tokens"])}
    risk = [ids[f"SNOMED-CT/{c}"] for g in CODES.values() for c in g
            if f"SNOMED-CT/{c}" in ids]
    other = np.setdiff1d(np.arange(5, len(ids)), risk)      # 5 specials never rewritten
    po, vo = seqs.patient_offsets, seqs.visit_offsets
    inputs = np.zeros(len(seqs.codes), bool)
    for i, k in zip(t["index"], t["landmark_visits"], strict=True):  # test code: a loop is fine
        inputs[vo[po[i]]:vo[po[i] + k]] = True
    codes = seqs.codes.copy()
    swap = inputs & np.isin(codes, other)
    codes[swap] = np.random.default_rng(0).choice(other, int(swap.sum()))
    assert (codes != seqs.codes).mean() > 0.3
    seqs.codes = codes
    seqs.save(tmp_path / "seq")
    shutil.copy(cohort / "seq" / "visits.parquet", tmp_path / "seq")
    res = build_outcomes(cohort / "interim", tmp_path / "seq", tmp_path / "out", OutcomeParams())
    pd.testing.assert_series_equal(res.table["subtype"], t["subtype"])
    pd.testing.assert_series_equal(res.table["true_risk"], t["true_risk"])


def test_deterministic_bytes(cohort, synth, tmp_path):
    outcomes(cohort, tmp_path, name="synthetic")
    for f in ("outcomes.parquet", "time_bins.json"):
        assert (tmp_path / "out" / f).read_bytes() == (cohort / "out" / f).read_bytes()


def test_mortality(cohort, synth, tmp_path):
    res = outcomes(cohort, tmp_path, name="mortality")
    t, pats = res.table, Sequences.load(cohort / "seq").patients
    death = days_since_epoch(pats["death_date"])[t["index"]]
    assert (t["event"] == (death > t["landmark_time"])).all() and t["event"].sum() > 0
    ev = t[t["event"] == 1]
    assert np.allclose(ev["duration"], death[t["event"] == 1] - ev["landmark_time"])
    assert t["true_risk"].isna().all()
    # same landmarks as the synthetic outcome: landmarks never depend on the outcome
    assert (t["landmark_time"].to_numpy() == synth.table["landmark_time"].to_numpy()).all()


def test_onset_excludes_the_already_diagnosed(cohort, synth, tmp_path):
    code = "59621000"  # essential hypertension
    res = outcomes(cohort, tmp_path, name=f"onset:{code}")
    t = res.table
    excluded = res.metrics[f"excluded_has_{code}_at_landmark"]
    assert excluded > 0 and len(t) + excluded == len(synth.table)
    seqs = Sequences.load(cohort / "seq")
    tok = seqs.vocab["tokens"].index(f"SNOMED-CT/{code}")
    po, vo = seqs.patient_offsets, seqs.visit_offsets
    for i, k, e in zip(t["index"], t["landmark_visits"], t["event"], strict=True):
        assert tok not in seqs.codes[vo[po[i]]:vo[po[i] + k]]       # not known at landmark
        if e:
            assert tok in seqs.codes[vo[po[i] + k]:vo[po[i + 1]]]   # diagnosed after it
    key = ["index", "landmark_visits"]
    dropped = synth.table.merge(t[key], on=key, how="left", indicator=True)
    dropped = dropped[dropped["_merge"] == "left_only"]
    assert len(dropped) == excluded
    # known at the landmark: in the inputs, or in older visits cut by sequences.max_visits
    truncated = seqs.n_visits == SequencesParams().max_visits
    assert all(tok in seqs.codes[vo[po[i]]:vo[po[i] + k]] or truncated[i]
               for i, k in zip(dropped["index"], dropped["landmark_visits"], strict=True))
    # a patient diagnosed between two landmarks keeps the earlier one, as an event
    both = synth.table["index"].isin(dropped["index"]) & synth.table["index"].isin(t["index"])
    assert both.any() and t[t["index"].isin(synth.table.loc[both, "index"])]["event"].all()


def test_onset_of_absent_code_lists_frequent_codes(cohort, tmp_path):
    with pytest.raises(InputError, match=r"230690007 never occurs.*162864005"):
        outcomes(cohort, tmp_path, name="onset:230690007")
    assert not (tmp_path / "out" / "outcomes.parquet").exists()


def test_no_training_events_is_an_error(cohort, tmp_path):
    with pytest.raises(InputError, match="'synthetic': no events in the train split"):
        outcomes(cohort, tmp_path, synthetic={"median_days": 1e12})


def test_time_bins():
    d = np.arange(1, 101, dtype=float)
    e = np.ones(100, int)
    q = time_bins(d, e, 4, "quantile")
    assert q[0] == 0 and q[-1] == 100 and len(q) == 5
    counts = np.histogram(d, q)[0]
    assert counts.max() - counts.min() <= 1
    assert np.allclose(time_bins(d, e, 4, "equal"), [0, 25, 50, 75, 100])
    e[50:] = 0  # censored durations do not place edges
    assert time_bins(d, e, 2, "quantile")[-1] == 50
    assert list(time_bins(np.full(10, 7.0), np.ones(10), 5)) == [0, 7]  # ties merge
    with pytest.raises(InputError, match="no events"):
        time_bins(d, np.zeros(100), 4)


def test_stage_writes_outputs_and_fails_cleanly(cohort, synth, tmp_path, monkeypatch, capsys):
    (tmp_path / "data" / "processed").mkdir(parents=True)
    shutil.copytree(cohort / "interim", tmp_path / "data" / "interim")
    shutil.copytree(cohort / "seq", tmp_path / "data" / "processed" / "sequences")
    monkeypatch.chdir(tmp_path)
    script = str(ROOT / "stages" / "outcomes.py")
    (tmp_path / "params.yaml").write_text("outcome:\n  name: 'onset:999999'\n")
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(script, run_name="__main__")
    assert exit_.value.code == 2 and "999999 never occurs" in capsys.readouterr().err
    assert not (tmp_path / "data" / "processed" / "outcomes").exists()
    (tmp_path / "params.yaml").write_text("outcome:\n  name: synthetic\n")
    runpy.run_path(script, run_name="__main__")
    out = tmp_path / "data" / "processed" / "outcomes" / "outcomes.parquet"
    assert out.read_bytes() == (cohort / "out" / "outcomes.parquet").read_bytes()
    m = json.loads((tmp_path / "metrics" / "outcomes.json").read_text())
    assert m["oracle_cindex_test"] == round(synth.metrics["oracle_cindex_test"], 6)
    for f in ("km_by_subtype.png", "km_by_subtype.csv"):
        assert (tmp_path / "plots" / "outcomes" / f).stat().st_size > 0


def test_horizons_fitted_to_the_outcome(cohort, synth, tmp_path):
    """outcome.horizons: null → quartiles of the training event times (whole days), written to
    time_bins.json where every later stage reads them; a given list is kept as is."""
    from ehrseq.survival.bins import read_bins

    t = synth.table
    tr = t[(t["split"] == "train") & (t["event"] == 1)]["duration"]
    want = np.unique(np.ceil(np.quantile(tr, [0.25, 0.5, 0.75])))
    cuts, horizons = read_bins(cohort / "out")
    assert horizons == list(want) == synth.metrics["horizons"] and len(horizons) == 3
    assert set(horizons) <= set(cuts) and synth.metrics["horizons_fitted"]
    mort = outcomes(cohort, tmp_path, name="mortality")      # death: a far longer time scale
    assert min(mort.metrics["horizons"]) > max(horizons)
    fixed = outcomes(cohort, tmp_path, name="mortality", horizons=[365, 30])
    assert fixed.metrics["horizons"] == [30.0, 365.0] and not fixed.metrics["horizons_fitted"]
    with pytest.raises(ValueError, match="horizons must be null"):
        OutcomeParams(horizons=[])


def test_lab_outcome_egfr_below_60(tmp_path):
    """lab_below:<LOINC>:<value>: the first value under the threshold known after the landmark;
    landmarks with one known at or before it are excluded; unmeasured: censored at the end of
    record."""
    from ehrseq.outcomes.real import lab

    day = pd.Timedelta(days=1)
    t0 = pd.Timestamp("1970-01-01", tz="UTC")
    # patient a: eGFR 80 (day 10), 55 (day 50), 40 (day 70); b: 90 (day 20); c: none
    ev = pd.DataFrame({"patient": ["a", "a", "a", "b", "a"],
                       "kind": ["observation"] * 4 + ["condition"],
                       "code": ["33914-3"] * 4 + ["33914-3"],
                       "value": [80.0, 55.0, 40.0, 90.0, 10.0],
                       "known_time": [t0 + d * day for d in (10, 50, 70, 20, 5)],
                       "description": "eGFR"})
    ev.to_parquet(tmp_path / "events.parquet")
    lm = Landmarks(index=np.array([0, 0, 0, 1, 2]),
                   landmark_time=np.array([5.0, 30.0, 60.0, 30.0, 30.0]),
                   landmark_visits=np.array([2, 3, 4, 2, 2]))
    eor = np.array([100.0, 200.0, 300.0])
    dur, event, keep, why = lab(tmp_path / "events.parquet", ["a", "b", "c"], lm, "33914-3",
                               "below", 60.0, eor)
    assert list(keep) == [True, True, False, True, True] and why == "33914-3_below_60_at_landmark"
    assert list(event) == [1, 1, 0, 0, 0]
    np.testing.assert_allclose(dur[[0, 1, 3, 4]], [45.0, 20.0, 170.0, 270.0])
    _, event_above, keep_above, _ = lab(tmp_path / "events.parquet", ["a", "b", "c"], lm,
                                        "33914-3", "above", 85.0, eor)
    assert list(keep_above) == [True, True, True, False, True]
    assert list(event_above) == [0, 0, 0, 0, 0]
    with pytest.raises(InputError, match=r"no numeric observation 33914-3 below -5.*33914-3"):
        lab(tmp_path / "events.parquet", ["a", "b", "c"], lm, "33914-3", "below", -5.0, eor)
    with pytest.raises(ValueError, match="lab_below:<LOINC code>:<value>"):
        OutcomeParams(name="lab_below:33914-3")
    assert OutcomeParams(name="lab_below:33914-3:60").name == "lab_below:33914-3:60"


def test_sequential_scenario_features_by_hand():
    """The positive control's features (order, SBP trend, visit gap, within-visit interaction)
    on one hand-made patient; and a clear error without lab-value tokens."""
    from ehrseq.outcomes.synthetic import sequential_effects

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + [f"LOINC/8480-6:q{i}" for i in range(5)] + \
        [f"LOINC/39156-5:q{i}" for i in range(5)] + ["SNOMED-CT/1"]
    sbp = {i: 5 + i for i in range(5)}
    bmi = {i: 10 + i for i in range(5)}
    # visits at days 0, 100, 300, 310: (SBP, BMI) bins (1, 4), (4, 1), (2, 4), (3, 4)
    visits = [[sbp[1], bmi[4]], [sbp[4], bmi[1]], [sbp[2], bmi[4], 15], [sbp[3], bmi[4]]]
    codes = np.array([c for v in visits for c in v], np.int32)
    vo = np.cumsum([0] + [len(v) for v in visits]).astype(np.int64)
    seqs = Sequences(codes=codes, visit_offsets=vo, patient_offsets=np.array([0, 4], np.int64),
                     visit_time=np.array([0.0, 100.0, 300.0, 310.0]),
                     visit_age=np.zeros(4, np.float32),
                     patients=pd.DataFrame({"patient": ["a"]}),
                     vocab={"tokens": tokens, "counts": [0] * len(tokens), "specials": specials})
    lm = Landmarks(index=np.array([0, 0, 0]), landmark_time=np.array([100.0, 300.0, 310.0]),
                   landmark_visits=np.array([2, 3, 4]), input_visits=np.array([2, 3, 2]))
    X, absent = sequential_effects(seqs, lm)
    # high = bins >= 3. Landmark 1 (visits 0-1): BMI high at day 0, SBP high at day 100 -> +1;
    # trend 4 - 1; gap 100; no visit with both high
    # landmark 2 (visits 0-2): same order, trend 2 - 4, gap 200, none both high
    # landmark 3 (window: visits 2-3 only): SBP high first at 310, BMI at 300 -> +1;
    # trend 3 - 2; gap 10; visit 3 has both high
    np.testing.assert_allclose(X, [[1, 3, -np.log(101), 0], [1, -2, -np.log(201), 0],
                                   [1, 1, -np.log(11), 1]])
    assert not any(absent.values())
    # outcome.synthetic.effects: one mechanism alone is its standardised feature; one that
    # does not vary over the landmarks (the order is +1 in all three) is an error
    from ehrseq.outcomes.synthetic import subtypes_and_risk
    from ehrseq.params import SyntheticParams
    from ehrseq.repro import round_decimals, standardise

    seqs.patients["birth_date"] = pd.Timestamp("1970-01-01")
    risk = subtypes_and_risk(seqs, lm, SyntheticParams(scenario="sequential",
                                                       effects=["short_gap"]))[1]
    np.testing.assert_array_equal(risk, round_decimals(standardise(X[:, 2])))
    with pytest.raises(InputError, match=r"effects \['high_bmi_first'\]: the planted risk is "
                                         "the same for every landmark"):
        subtypes_and_risk(seqs, lm, SyntheticParams(scenario="sequential",
                                                    effects=["high_bmi_first"]))
    seqs.vocab["tokens"] = specials + [f"LOINC/8480-6/{i}" for i in range(10)] + ["S/1"]
    with pytest.raises(InputError, match="sequences.numeric_bins > 0"):
        sequential_effects(seqs, lm)


def test_synthetic_outcome_without_synthea_codes_names_them(cohort, tmp_path):
    """A dataset without Synthea's condition codes (e.g. a foreign MEDS dataset): a clear
    error naming the codes and the outcomes that work, no output."""
    seqs = Sequences.load(cohort / "seq", mmap=False)
    seqs.vocab = dict(seqs.vocab, tokens=[t.replace("SNOMED-CT/", "ICD10/")
                                          for t in seqs.vocab["tokens"]])
    seqs.save(tmp_path / "seq")
    shutil.copy(cohort / "seq" / "visits.parquet", tmp_path / "seq")
    with pytest.raises(InputError, match=r"SNOMED-CT/59621000.*use outcome.name mortality"):
        build_outcomes(cohort / "interim", tmp_path / "seq", tmp_path / "out", OutcomeParams())
    assert not (tmp_path / "out" / "outcomes.parquet").exists()


def test_effects_subset_plants_one_mechanism(cohort, synth, tmp_path):
    """outcome.synthetic.effects (issue 27): only the named effects enter the risk; every
    effect listed explicitly is the default; an unknown name lists the scenario's effects."""
    from ehrseq.outcomes.synthetic import scenario_effects

    t = synth.table
    every = outcomes(cohort, tmp_path, synthetic={"effects": scenario_effects("additive")})
    assert (every.table["true_risk"] == t["true_risk"]).all()
    one = outcomes(cohort, tmp_path, synthetic={"effects": ["hypertension"]})
    x = one.table["true_risk"].to_numpy()
    assert len(np.unique(x)) == 2                  # hypertension recorded or not
    assert abs(x.std() - 1.0) < 1e-6 and (one.table["subtype"] == t["subtype"]).all()
    assert one.metrics["synthetic_effects"] == "hypertension"
    assert one.metrics["effect_diabetes_beta"] == 0.0
    assert one.metrics["effect_hypertension_beta"] == 0.7
    assert one.metrics["oracle_cindex_all"] < synth.metrics["oracle_cindex_all"]
    with pytest.raises(InputError, match=r"\['gap'\] not an effect of scenario 'additive'; "
                                         r"accepted: \['hypertension', 'prediabetes', "):
        outcomes(cohort, tmp_path, synthetic={"effects": ["gap"]})
