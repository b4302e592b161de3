"""MEDS in and out (ehrseq.data.meds), on real data: the real Synthea exports in
../shared/data/synthea-csv (skipped when absent) and MEDS datasets built by the
meds-testing-helpers package (its static sample and its generator), never by our exporter.
Schemas are checked with the ``meds`` package's own classes and meds-testing-helpers'
MEDSDataset reader; predictions with meds-evaluation's PredictionSchema and evaluator."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import export_dir

from ehrseq.data import meds as M
from ehrseq.data.ingest import EVENT_COLUMNS, ingest
from ehrseq.data.sequences import build_sequences
from ehrseq.data.synthesize import copy_meds_root, is_meds_root
from ehrseq.io import InputError
from ehrseq.params import OutcomeParams, SequencesParams

HORIZONS = [30, 365]


# --------------------------------------------------------------------------- fixtures


def _outcomes(interim: Path, seq: Path, out: Path, name: str) -> pd.DataFrame:
    from ehrseq.outcomes.build import build_outcomes

    out.mkdir(parents=True, exist_ok=True)
    build_outcomes(interim, seq, out, OutcomeParams(name=name, horizons=HORIZONS),
                   SequencesParams().event_kinds)
    return pd.read_parquet(out / "outcomes.parquet")


class Cohort:
    """One real export through the CSV path, exported to MEDS (built once per module)."""

    def __init__(self, name: str, root: Path):
        self.root = root
        self.interim, self.seq, self.meds = root / "interim", root / "seq", root / "meds"
        self.interim.mkdir(parents=True)
        self.csv_result = ingest(export_dir(name), self.interim)
        build_sequences(self.interim, self.seq, SequencesParams())
        self.info = M.write_meds(self.interim, self.meds, splits=self.seq / "patients.parquet")


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    made: dict[str, Cohort] = {}

    def get(name: str) -> Cohort:
        if name not in made:
            made[name] = Cohort(name, tmp_path_factory.mktemp(name))
        return made[name]

    return get


@pytest.fixture
def dbt(cohorts) -> Cohort:
    return cohorts("dbt-synthea-v3.0")


@pytest.fixture
def unmc(cohorts) -> Cohort:
    return cohorts("unmc-v3.2")


def shards(root: Path) -> list[Path]:
    return sorted((root / "data").rglob("*.parquet"))


# --------------------------------------------------------------------------- export


def test_export_validates_against_meds_schemas(dbt):
    root, pats = dbt.meds, pd.read_parquet(dbt.interim / "patients.parquet")
    want = meds.DataSchema.schema()
    seen: dict[int, str] = {}
    births = deaths = 0
    for s in shards(root):
        t = pq.read_table(s)
        meds.DataSchema.validate(t)              # the package's own check
        for f in want:                           # and exactly its types, not castable ones
            assert t.schema.field(f.name).type == f.type, (s, f.name)
        df = t.to_pandas()
        for sid, g in df.groupby("subject_id", sort=False):
            assert sid not in seen, f"subject {sid} in {seen.get(sid)} and {s}"
            seen[sid] = s.name
            null = g["time"].isna().to_numpy()
            assert null[: null.sum()].all()  # static rows (time null) first
            assert g["time"].dropna().is_monotonic_increasing
        births += (df["code"] == meds.birth_code).sum()
        deaths += (df["code"] == meds.death_code).sum()
    assert births == len(pats) == len(seen) == dbt.info["subjects"]
    assert deaths == pats["death_date"].notna().sum() > 0  # from the death date itself

    codes = pq.read_table(root / meds.code_metadata_filepath)
    meds.CodeMetadataSchema.validate(codes)
    data_codes = set(pc.unique(pa.concat_arrays(
        [pq.read_table(s, columns=["code"])["code"].combine_chunks() for s in shards(root)]
    )).to_pylist())
    assert data_codes == set(codes["code"].to_pylist())  # every code that occurs, no other
    assert all(d for d in codes["description"].to_pylist())

    splits = pq.read_table(root / meds.subject_splits_filepath)
    meds.SubjectSplitSchema.validate(splits)
    ours = pd.read_parquet(dbt.seq / "patients.parquet").set_index("patient")["split"]
    ids = pd.read_parquet(root / M.ID_MAP).set_index("patient")["subject_id"]
    got = dict(zip(splits["subject_id"].to_pylist(), splits["split"].to_pylist(), strict=True))
    expect = {meds.train_split: "train", meds.tuning_split: "val", meds.held_out_split: "test"}
    assert {p: expect[got[ids[p]]] for p in ours.index} == ours.to_dict()
    for s in shards(root):  # each shard holds one split's subjects
        assert {got[i] for i in pq.read_table(s)["subject_id"].to_pylist()} == {s.parent.name}

    meta = json.loads((root / meds.dataset_metadata_filepath).read_text())
    meds.DatasetMetadataSchema.validate(meta)
    assert meta["meds_version"] == meds.__version__ and meta["etl_name"] == "ehrseq"
    # created_at comes from the cohort (its end of record), not the clock
    assert pd.Timestamp(meta["created_at"]) == pats["end_of_record"].max()


def test_export_opens_with_meds_testing_helpers(unmc, tmp_path):
    """A MEDS tool reads the export and its labels: MEDSDataset validates every table."""
    from meds_testing_helpers.dataset import MEDSDataset

    root = tmp_path / "meds"
    shutil.copytree(unmc.meds, root)
    out = _outcomes(unmc.interim, unmc.seq, tmp_path / "out", "synthetic")
    M.write_labels(tmp_path / "out" / "outcomes.parquet", HORIZONS, root / M.TASK_LABELS, root,
                   outcome="synthetic")
    d = MEDSDataset(root_dir=root)
    assert sum(t.num_rows for t in d.data_shards.values()) == unmc.info["rows"]
    assert d.dataset_metadata.etl_name == "ehrseq"
    assert d.subject_splits.num_rows == unmc.info["subjects"]
    assert sorted(d.task_labels) == ["synthetic_30d", "synthetic_365d"]
    assert d.task_labels["synthetic_30d"]["labels"].num_rows <= len(out)


def test_export_bytes_reproducible_and_ids_stable(dbt, tmp_path):
    again = tmp_path / "again"
    M.write_meds(dbt.interim, again, splits=dbt.seq / "patients.parquet")

    def digest(root):
        return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(root.rglob("*")) if f.is_file()}

    assert digest(again) == digest(dbt.meds)
    ids = pd.read_parquet(dbt.meds / M.ID_MAP)
    assert ids["subject_id"].is_unique and (ids["subject_id"] >= 0).all()
    # the id is a hash of the patient id alone: the same in any cohort that holds the patient
    some = ids.sample(5, random_state=0)
    assert M.id_map_table(some["patient"])["subject_id"].tolist() == \
        some.sort_values("patient")["subject_id"].tolist()


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", ["dbt-synthea-v3.0", "unmc-v3.2"])
def test_round_trip_gives_csv_events_sequences_and_outcomes(cohorts, name, tmp_path):
    c = cohorts(name)
    back = tmp_path / "back"
    res = M.read_meds(c.meds, back)
    a = pd.read_parquet(c.interim / "events.parquet")
    b = pd.read_parquet(back / "events.parquet")
    assert list(b.columns) == list(EVENT_COLUMNS) and a.dtypes.equals(b.dtypes)
    same = [col for col in EVENT_COLUMNS if col not in ("value", "description")]
    pd.testing.assert_frame_equal(a[same], b[same])
    # numeric values pass through MEDS' float32
    np.testing.assert_allclose(a["value"], b["value"], rtol=1e-6, equal_nan=True)
    assert a["value"].notna().sum() == b["value"].notna().sum()
    # one description per code in codes.parquet: the code's most frequent one
    assert (a["description"] == b["description"]).mean() > 0.9
    pd.testing.assert_frame_equal(pd.read_parquet(c.interim / "patients.parquet"),
                                  pd.read_parquet(back / "patients.parquet"))
    assert (res.patients, res.events, res.end_of_record) == \
        (c.csv_result.patients, c.csv_result.events, c.csv_result.end_of_record)

    seq = tmp_path / "seq"
    build_sequences(back, seq, SequencesParams())
    for f in sorted(c.seq.iterdir()):
        assert f.read_bytes() == (seq / f.name).read_bytes(), f.name
    for outcome in ("mortality", "synthetic"):
        try:
            want = _outcomes(c.interim, c.seq, tmp_path / f"a_{outcome}", outcome)
        except InputError as err:  # too few patients for this outcome: the same refusal
            with pytest.raises(InputError, match=re.escape(str(err))):
                _outcomes(back, seq, tmp_path / f"b_{outcome}", outcome)
            continue
        pd.testing.assert_frame_equal(want, _outcomes(back, seq, tmp_path / f"b_{outcome}",
                                                      outcome))


def test_ingest_stage_reader_takes_meds_or_csv(dbt, tmp_path):
    """The ingest stage reads through ingest_source: a MEDS root goes the MEDS way, a Synthea
    CSV export (or Synthea's output root, whose metadata/ holds JSON run records) the CSV way."""
    for src in (dbt.meds, export_dir("dbt-synthea-v3.0")):
        out = tmp_path / src.name
        out.mkdir()
        M.ingest_source(src, out)
        pd.testing.assert_frame_equal(pd.read_parquet(dbt.interim / "patients.parquet"),
                                      pd.read_parquet(out / "patients.parquet"))
    synthea_root = tmp_path / "output"
    (synthea_root / "metadata").mkdir(parents=True)
    (synthea_root / "metadata" / "2024_run.json").write_text("{}")
    shutil.copytree(export_dir("dbt-synthea-v3.0"), synthea_root / "csv")
    assert is_meds_root(dbt.meds) and not is_meds_root(synthea_root)
    assert not is_meds_root(export_dir("dbt-synthea-v3.0"))
    assert tuple(EVENT_COLUMNS) == tuple(pd.read_parquet(tmp_path / "meds" / "events.parquet")
                                         .columns)


def test_copy_meds_root_for_the_synthesize_stage(dbt, tmp_path):
    """data.source: a MEDS root is copied into data/raw/synthea as it is (data/, metadata/)."""
    src = tmp_path / "src"
    shutil.copytree(dbt.meds, src)
    (src / M.TASK_LABELS).mkdir()
    stats = copy_meds_root(src, tmp_path / "raw")
    assert stats.rows["patients.csv"] == dbt.info["subjects"]
    assert stats.rows["meds_rows"] == dbt.info["rows"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["data", "metadata"]
    out = tmp_path / "out"
    out.mkdir()
    M.ingest_source(tmp_path / "raw", out)
    cols = ["patient", "time", "code"]
    pd.testing.assert_frame_equal(pd.read_parquet(dbt.interim / "events.parquet")[cols],
                                  pd.read_parquet(out / "events.parquet")[cols])


# --------------------------------------------------------------------------- foreign MEDS


def test_reads_meds_testing_helpers_static_sample(tmp_path):
    from meds_testing_helpers.dataset import MEDSDataset
    from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT

    root = tmp_path / "sample"
    MEDSDataset.from_yaml(SIMPLE_STATIC_SHARDED_BY_SPLIT).write(root)
    # its codes.parquet lacks HEIGHT, DISCHARGE, ADMISSION//...: strict reading says so
    with pytest.raises(InputError, match=r"codes\.parquet: column code lacks 5 code"):
        M.read_meds(root, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    with pytest.raises(InputError, match="codes.parquet"):  # the DAG with on_bad_rows: error
        M.ingest_source(root, tmp_path, on_bad_rows="error")

    out = tmp_path / "out"
    out.mkdir()
    res = M.ingest_source(root, out)  # the DAG's default (on_bad_rows: drop) keeps them
    ev = pd.read_parquet(out / "events.parquet")
    pats = pd.read_parquet(out / "patients.parquet").set_index("patient")
    assert res.patients == 6 and res.dropped == {}
    assert str(pats.loc["239684", "birth_date"]) == "1980-12-28"
    assert pats["death_date"].isna().all()
    # living: censored at their own last event (a MEDS dataset states no end of record)
    assert str(pats.loc["239684", "end_of_record"]) == "2010-05-11 19:27:19+00:00"
    hr = ev[ev["code"] == "HR"]
    assert hr["kind"].eq("observation").all() and hr["system"].eq("MEDS").all()
    assert sorted(hr[hr["patient"] == "68729"]["value"]) == [86.0]
    adm = ev[ev["system"] == "ADMISSION"]
    assert adm["kind"].eq("encounter").all() and set(adm["code"]) == {
        "CARDIAC", "PULMONARY", "ORTHOPEDIC"}
    # static facts are dated at birth; events at one timestamp form one visit
    eye = ev[(ev["patient"] == "239684") & (ev["system"] == "EYE_COLOR")]
    assert eye["time"].dt.strftime("%Y-%m-%d").tolist() == ["1980-12-28"]
    timed = ev[ev["encounter"].notna()]
    assert (timed.groupby("encounter")["time"].nunique() == 1).all()
    assert timed["encounter"].str.startswith("t:").all()
    assert ev[ev["code"] == "HR"]["description"].eq("Heart Rate").all()


def _generated_meds(root: Path, n: int = 80) -> None:
    """A MEDS dataset from meds-testing-helpers' generator (random codes static//i,
    dynamic//i, births and deaths, an empty codes.parquet)."""
    from meds_testing_helpers.dataset_generator import MEDSDataDFGenerator, MEDSDatasetGenerator
    from meds_testing_helpers.rvs import (
        DatetimeGenerator,
        PositiveIntGenerator,
        PositiveTimeDeltaGenerator,
        ProportionGenerator,
    )

    day = np.timedelta64
    g = MEDSDataDFGenerator(
        birth_datetime_per_subject=DatetimeGenerator(
            [np.datetime64(d, "us") for d in ("1950-01-01", "1970-06-15", "1985-03-02")]),
        start_data_datetime_per_subject=DatetimeGenerator(
            [np.datetime64("2005-01-01", "us"), np.datetime64("2010-02-02", "us")]),
        time_between_birth_and_data_per_subject=PositiveTimeDeltaGenerator(
            [day(20, "Y"), day(30, "Y")]),
        time_between_data_and_death_per_subject=PositiveTimeDeltaGenerator(
            [day(30, "D"), day(400, "D")]),
        time_between_data_events_per_subject=PositiveTimeDeltaGenerator(
            [day(20, "D"), day(90, "D")]),
        num_events_per_subject=PositiveIntGenerator([6, 10, 15]),
        num_measurements_per_event=PositiveIntGenerator([1, 2, 3]),
        num_static_measurements_per_subject=PositiveIntGenerator([1, 2]),
        frac_dynamic_code_occurrences_with_value=ProportionGenerator([0, 0.5, 1.0]),
        frac_static_code_occurrences_with_value=ProportionGenerator([0]),
        static_vocab_size=4, dynamic_vocab_size=20, frac_subjects_with_death=0.4)
    MEDSDatasetGenerator(data_generator=g, shard_size=20, dataset_name="generated") \
        .sample(n, np.random.default_rng(1)).write(root)


@pytest.mark.filterwarnings("ignore:no explicit representation of timezones")
def test_generated_meds_dataset_runs_to_sequences_and_mortality(tmp_path):
    root = tmp_path / "gen"
    _generated_meds(root)
    interim = tmp_path / "interim"
    interim.mkdir()
    res = M.ingest_source(root, interim)
    raw = pd.concat([pd.read_parquet(s) for s in shards(root)])
    assert res.patients == raw["subject_id"].nunique() == 80
    dead = set(raw.loc[raw["code"] == meds.death_code, "subject_id"].astype(str))
    pats = pd.read_parquet(interim / "patients.parquet")
    assert set(pats.loc[pats["death_date"].notna(), "patient"]) == dead
    ev = pd.read_parquet(interim / "events.parquet")
    timed = raw[raw["time"].notna() & ~raw["code"].isin([meds.birth_code, meds.death_code])]
    assert len(ev) == len(timed) + raw["time"].isna().sum()
    assert ev["value"].notna().sum() == raw["numeric_value"].notna().sum()
    seq = tmp_path / "seq"
    m = build_sequences(interim, seq, SequencesParams()).metrics
    assert m["patients"] == 80 and m["vocab_size"] > 10
    out = _outcomes(interim, seq, tmp_path / "out", "mortality")
    assert 0 < out["event"].sum() < len(out)  # mortality from MEDS_DEATH


# --------------------------------------------------------------------------- bad input


def _rewrite(path: Path, fn) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def _bad_missing_data(root):
    shutil.rmtree(root / "data")
    return [str(root / "data")]


def _bad_type(root):
    s = shards(root)[0]
    _rewrite(s, lambda t: t.set_column(t.schema.get_field_index("time"), "time",
                                       pc.cast(t["time"], pa.string())))
    return [str(s), "column time", "string"]


def _bad_unsorted(root):
    s = shards(root)[0]
    df = pq.read_table(s).to_pandas()
    first = df["subject_id"].iloc[0]
    rows = df.index[(df["subject_id"] == first) & df["time"].notna()]
    a, b = rows[1], rows[-1]
    df.loc[[a, b]] = df.loc[[b, a]].to_numpy()
    pq.write_table(pa.Table.from_pandas(df, schema=pq.read_schema(s), preserve_index=False), s)
    return [str(s), "column time is not sorted"]


def _bad_split_subject(root):
    a, b = shards(root)[:2]
    ta, tb = pq.read_table(a), pq.read_table(b)
    first = ta["subject_id"][0]
    moved = ta.filter(pc.equal(ta["subject_id"], first)).slice(0, 3)
    pq.write_table(pa.concat_tables([tb, moved.cast(tb.schema)]), b)
    return [str(a), str(b), "column subject_id", "split across shards"]


def _bad_not_contiguous(root):
    s = shards(root)[0]
    t = pq.read_table(s)
    first = t["subject_id"][0]
    mine = pc.equal(t["subject_id"], first)
    n = pc.sum(mine).as_py()
    pq.write_table(pa.concat_tables([t.slice(0, n - 1), t.slice(n), t.slice(n - 1, 1)]), s)
    return [str(s), "column subject_id", "not contiguous"]


def _bad_codes(root):
    path = root / meds.code_metadata_filepath
    _rewrite(path, lambda t: t.filter(pc.invert(pc.starts_with(t["code"], "CONDITION//"))))
    return [str(path), "column code", "CONDITION//SNOMED-CT//"]


BAD = {"missing data/": _bad_missing_data, "wrong column type": _bad_type,
       "unsorted shard": _bad_unsorted, "subject across shards": _bad_split_subject,
       "subject not contiguous": _bad_not_contiguous, "codes absent": _bad_codes}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_and_column_and_leaves_nothing(dbt, tmp_path, case):
    root = tmp_path / "meds"
    shutil.copytree(dbt.meds, root)
    needles = BAD[case](root)
    out = tmp_path / "interim"
    with pytest.raises(InputError) as err:
        M.read_meds(root, out)
    for n in needles:
        assert n in str(err.value), (n, str(err.value))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["meds"]
    # an existing output stays as it was
    out.mkdir()
    (out / "events.parquet").write_text("before")
    with pytest.raises(InputError):
        M.read_meds(root, out)
    assert [p.name for p in out.iterdir()] == ["events.parquet"]
    assert (out / "events.parquet").read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interim", "meds"]


def test_subject_without_birth_dropped_or_error(dbt, tmp_path):
    root = tmp_path / "meds"
    shutil.copytree(dbt.meds, root)
    s = shards(root)[0]
    t = pq.read_table(s)
    victim = t["subject_id"][0].as_py()
    birth = pc.and_(pc.equal(t["subject_id"], victim), pc.equal(t["code"], meds.birth_code))
    pq.write_table(t.filter(pc.invert(birth)), s)
    with pytest.raises(InputError, match=rf"{s.name}: row 1: subject has no MEDS_BIRTH"):
        M.read_meds(root, tmp_path / "strict", on_bad_rows="error")
    res = M.read_meds(root, tmp_path / "out")
    key = f"{s.relative_to(root)}:subject has no MEDS_BIRTH"
    assert res.patients == dbt.info["subjects"] - 1 and res.dropped[key] > 0
    dropped = pd.read_parquet(tmp_path / "out" / "dropped_rows.parquet")
    assert len(dropped) == res.dropped[key] and dropped["row"].min() == 1


# --------------------------------------------------------------------------- labels


def test_labels_one_task_per_horizon_censored_dropped(unmc, tmp_path):
    t = _outcomes(unmc.interim, unmc.seq, tmp_path / "out", "synthetic")
    assert t.groupby("patient").size().max() > 1  # several landmarks per patient
    counts = M.write_labels(tmp_path / "out" / "outcomes.parquet", HORIZONS,
                            tmp_path / "labels", unmc.meds, outcome="synthetic")
    ids = pd.read_parquet(unmc.meds / M.ID_MAP).set_index("patient")["subject_id"]
    assert json.loads((tmp_path / "labels" / ".task_names.json").read_text()) == \
        ["synthetic_30d", "synthetic_365d"]
    for h in HORIZONS:
        name = f"synthetic_{h}d"
        lab = pq.read_table(tmp_path / "labels" / name / "labels.parquet")
        meds.LabelSchema.validate(lab)
        assert lab.schema.names == ["subject_id", "prediction_time", "boolean_value"]
        pos = (t["event"] == 1) & (t["duration"] <= h)
        known = pos | (t["duration"] >= h)
        assert counts[name] == {"labels": int(known.sum()), "positive": int(pos.sum()),
                                "dropped_censored": int((~known).sum())}
        assert 0 < (~known).sum()  # censored before the horizon: no label, dropped
        k = t[known]
        want = pd.DataFrame({
            "subject_id": k["patient"].map(ids).to_numpy(),
            "prediction_time": pd.to_datetime(np.round(k["landmark_time"] * 86400e6)
                                              .astype("int64"), unit="us"),
            "boolean_value": pos[known].to_numpy()}).sort_values(
            ["subject_id", "prediction_time"]).reset_index(drop=True)
        got = lab.to_pandas()
        got["prediction_time"] = got["prediction_time"].astype("datetime64[us]")
        want["prediction_time"] = want["prediction_time"].astype("datetime64[us]")
        pd.testing.assert_frame_equal(got, want)


def test_predictions_in_meds_evaluation_format(unmc, tmp_path):
    import polars as pl
    from meds_evaluation.evaluate import evaluate_binary_classification
    from meds_evaluation.schema import PredictionSchema

    from ehrseq.survival.curves import km_survival, survival_at

    t = _outcomes(unmc.interim, unmc.seq, tmp_path / "out", "synthetic")
    tr, te = t[t["split"] == "train"], t[t["split"] == "test"]
    times = np.unique(tr["duration"].to_numpy(float))
    km = np.broadcast_to(km_survival(tr["duration"], tr["event"], times), (len(te), len(times)))
    # a second real model: exponential survival with a rate rising with the landmark's age
    pats = pd.read_parquet(unmc.seq / "patients.parquet")
    age = (te["landmark_time"].to_numpy() - pats["birth_date"].iloc[te["index"]].astype(
        "datetime64[s]").astype("int64").to_numpy() / 86400) / 365.25
    rate = 1e-4 * np.exp(age / 30)
    expo = np.exp(-np.outer(rate, times))
    rev = np.arange(len(te))[::-1]  # rows stored in another order than outcomes.parquet
    files = {}
    for name, surv in (("km", km), ("expo", expo)):
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], index=te["index"].to_numpy()[rev],
                 landmark_visits=te["landmark_visits"].to_numpy()[rev], surv=surv[rev],
                 times=times)
    counts = M.write_predictions(files, tmp_path / "out" / "outcomes.parquet", HORIZONS,
                                 tmp_path / "pred", unmc.meds, outcome="synthetic")
    for h in HORIZONS:
        name = f"synthetic_{h}d"
        lab = M._label_rows(te.reset_index(drop=True), h)[0].to_numpy()
        p = pq.read_table(tmp_path / "pred" / name / "expo.parquet")
        PredictionSchema.validate(p)
        assert counts[name] == {"km": int(lab.sum()), "expo": int(lab.sum())}
        want = 1 - survival_at(expo[lab], times, h)  # the evaluate stage's reading
        np.testing.assert_allclose(p["predicted_boolean_probability"].to_numpy(), want,
                                   rtol=1e-6)
        res = evaluate_binary_classification(pl.read_parquet(tmp_path / "pred" / name /
                                                              "expo.parquet"))
        scored = res["samples_equally_weighted"]  # meds-evaluation scored the probabilities
        assert 0 <= scored["roc_auc_score"] <= 1 and 0 <= scored["brier_score"] <= 1
    # a prediction file that misses test landmarks is refused, nothing written
    np.savez(files["km"], index=te["index"].to_numpy()[1:],
             landmark_visits=te["landmark_visits"].to_numpy()[1:], surv=km[1:], times=times)
    with pytest.raises(InputError, match="km.npz: predictions miss 1 test landmarks"):
        M.write_predictions(files, tmp_path / "out" / "outcomes.parquet", HORIZONS,
                            tmp_path / "pred2", unmc.meds)
    assert not (tmp_path / "pred2").exists()


def test_kind_mapping_documented_and_overridable():
    own = dict(own=True, kind_map=M.KIND_PREFIXES | M.SYSTEM_KINDS, default_kind="observation")
    assert M._parse_code("CONDITION//SNOMED-CT//44054006", **own) == \
        ("condition", "SNOMED-CT", "44054006")
    kmap = {**M.SYSTEM_KINDS, **M.KIND_PREFIXES}
    foreign = dict(own=False, kind_map=kmap, default_kind="observation")
    assert M._parse_code("DIAGNOSIS//ICD10CM//I10", **foreign) == ("condition", "ICD10CM", "I10")
    assert M._parse_code("LAB//50912//mg/dL", **foreign) == ("observation", "LAB", "50912//mg/dL")
    assert M._parse_code("LOINC/8302-2", **foreign) == ("observation", "LOINC", "8302-2")
    assert M._parse_code("RxNorm//197361", **foreign) == ("medication", "RxNorm", "197361")
    assert M._parse_code("HR", **foreign) == ("observation", "MEDS", "HR")
    with pytest.raises(ValueError, match="unknown event kind"):
        M.ingest_meds(".", ".", kind_map={"HR": "vital"})
