import csv
import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, export_dir

from ehrseq.data.ingest import TABLES, ingest
from ehrseq.io import InputError


def csv_rows(path: Path) -> int:
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def test_events_per_kind_equal_csv_rows(real_export, tmp_path):
    res = ingest(real_export, tmp_path)
    ev = pd.read_parquet(tmp_path / "events.parquet")
    assert res.dropped == {}  # the real exports are clean: every row is kept
    for spec in TABLES:
        path = real_export / spec.file
        expected = csv_rows(path) if path.exists() else 0
        assert (ev["kind"] == spec.kind).sum() == expected, spec.file
    pats = pd.read_parquet(tmp_path / "patients.parquet")
    assert len(pats) == csv_rows(real_export / "patients.csv") == res.patients
    assert str(ev["time"].dtype) == "datetime64[us, UTC]"
    assert set(ev["system"]) <= {"SNOMED-CT", "RxNorm", "LOINC", "CVX"}
    assert ev["patient"].isin(pats["patient"]).all()
    # sorted by patient then time
    assert ev[["patient", "time"]].equals(ev.sort_values(["patient", "time"], kind="stable")[["patient", "time"]])


def test_observation_values_and_units_kept(tmp_path):
    src = export_dir("dbt-synthea-v3.0")
    ingest(src, tmp_path)
    ev = pd.read_parquet(tmp_path / "events.parquet")
    obs = ev[ev["kind"] == "observation"]
    raw = pd.read_csv(src / "observations.csv", dtype=str)
    numeric = raw[raw["TYPE"] == "numeric"]
    assert obs["value"].notna().sum() == len(numeric)
    height = obs[(obs["code"] == "8302-2") & obs["value"].notna()]
    assert (height["unit"] == "cm").all() and height["value"].between(30, 250).all()


def test_deterministic_bytes(tmp_path):
    src = export_dir("unmc-v3.2")
    digests = []
    for i in range(2):
        out = tmp_path / str(i)
        out.mkdir()
        ingest(src, out)
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                        for f in sorted(out.iterdir())})
    assert digests[0] == digests[1]


def test_patient_ranges_write_the_same_events(tmp_path):
    """Past PATIENTS_PER_RANGE patients, events.parquet is written range by range (a bounded
    sort and spill at 100,000 patients): ranges of 7 patients give the same rows in the same
    order, and the sequences built from them are the same bytes."""
    from ehrseq.data.sequences import build_sequences
    from ehrseq.params import SequencesParams

    src = export_dir("unmc-v3.2")
    for name, per_range in (("one", 10_000), ("ranges", 7)):
        (tmp_path / name).mkdir()
        res = ingest(src, tmp_path / name, patients_per_range=per_range)
        assert res.patients > 7 * 3                      # several ranges
        build_sequences(tmp_path / name, tmp_path / f"{name}-seq", SequencesParams())
    for f in ("events", "patients", "dropped_rows"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"one/{f}.parquet"),
                                      pd.read_parquet(tmp_path / f"ranges/{f}.parquet"))
    for f in sorted((tmp_path / "one-seq").iterdir()):
        assert f.read_bytes() == (tmp_path / "ranges-seq" / f.name).read_bytes(), f.name


@pytest.fixture
def small_export(tmp_path) -> Path:
    """A copy of the small real export that tests may break."""
    dst = tmp_path / "export"
    shutil.copytree(export_dir("dbt-synthea-v3.0"), dst)
    return dst


def edit_csv(path: Path, fn) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df)
    df.to_csv(path, index=False)


def test_optional_files_and_columns_may_be_absent(small_export, tmp_path, caplog):
    (small_export / "devices.csv").unlink()
    edit_csv(small_export / "conditions.csv", lambda d: d.drop(columns=["DESCRIPTION"], inplace=True))
    out = tmp_path / "out"
    out.mkdir()
    with caplog.at_level(logging.WARNING):
        res = ingest(small_export, out)
    assert "devices.csv" in caplog.text and "conditions.csv:DESCRIPTION" in caplog.text
    assert "device" not in res.events_by_kind
    assert res.events_by_kind["condition"] == 438


def test_missing_required_file(small_export, tmp_path):
    (small_export / "encounters.csv").unlink()
    with pytest.raises(InputError, match="required file encounters.csv is missing"):
        ingest(small_export, tmp_path)


def test_missing_required_column(small_export, tmp_path):
    edit_csv(small_export / "medications.csv", lambda d: d.drop(columns=["CODE"], inplace=True))
    with pytest.raises(InputError, match=r"medications.csv: required column CODE is missing"):
        ingest(small_export, tmp_path)


def break_rows(export: Path) -> None:
    def bad(d):
        d.loc[3, "START"] = "not-a-date"
        d.loc[5, "PATIENT"] = "no-such-patient"
    edit_csv(export / "conditions.csv", bad)


def test_bad_rows_dropped_with_counts_and_side_file(small_export, tmp_path):
    break_rows(small_export)
    res = ingest(small_export, tmp_path, on_bad_rows="drop")
    assert res.dropped == {"conditions.csv:unparseable date": 1,
                           "conditions.csv:unknown patient id": 1}
    assert res.events_by_kind["condition"] == 438 - 2
    side = pd.read_parquet(tmp_path / "dropped_rows.parquet")
    assert sorted(side["row"]) == [4, 6]  # 1-based data rows (line = row + 1)
    assert "not-a-date" in side.set_index("row").loc[4, "raw"]


def test_rows_numbered_across_batches(small_export, tmp_path, monkeypatch):
    """Rows are numbered as DuckDB streams them, batch by batch (no window over the whole
    file): batches of 2 rows name the same dropped rows and write the same bytes."""
    import ehrseq.data.ingest as ingest_mod

    break_rows(small_export)
    whole, batched = tmp_path / "whole", tmp_path / "batched"
    whole.mkdir(), batched.mkdir()
    ingest(small_export, whole, on_bad_rows="drop")
    monkeypatch.setattr(ingest_mod, "ROWS_PER_BATCH", 2)
    ingest(small_export, batched, on_bad_rows="drop")
    assert sorted(pd.read_parquet(batched / "dropped_rows.parquet")["row"]) == [4, 6]
    for f in ("events", "patients", "dropped_rows"):
        assert (whole / f"{f}.parquet").read_bytes() == (batched / f"{f}.parquet").read_bytes()


def test_bad_rows_error_names_file_and_row(small_export, tmp_path):
    break_rows(small_export)
    with pytest.raises(InputError, match=r"conditions.csv: data row 4 \(line 5\): unparseable date"):
        ingest(small_export, tmp_path, on_bad_rows="error")


def test_empty_cohort(small_export, tmp_path):
    edit_csv(small_export / "patients.csv", lambda d: d.drop(index=d.index, inplace=True))
    with pytest.raises(InputError, match="empty cohort"):
        ingest(small_export, tmp_path)


def test_synthea_1x_refused(tmp_path):
    src = tmp_path / "v1"
    src.mkdir()
    (src / "patients.csv").write_text("ID,BIRTHDATE,DEATHDATE,SSN\np1,1980-01-01,,999\n")
    (src / "encounters.csv").write_text("ID,DATE,PATIENT,CODE,DESCRIPTION\ne1,2010-01-01,p1,1,x\n")
    with pytest.raises(InputError, match=r"Synthea 1.x, unsupported"):
        ingest(src, tmp_path)


def test_stage_failure_leaves_previous_output(small_export, tmp_path):
    """The stage script exits non-zero with a clear message and leaves stored output intact."""
    repo = tmp_path / "repo"
    (repo / "data/raw").mkdir(parents=True)
    shutil.copytree(small_export, repo / "data/raw/synthea")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    cmd = [sys.executable, str(ROOT / "stages/ingest.py")]
    ok = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    before = (repo / "data/interim/events.parquet").read_bytes()
    break_rows(repo / "data/raw/synthea")
    params = (repo / "params.yaml").read_text().replace("on_bad_rows: drop", "on_bad_rows: error")
    (repo / "params.yaml").write_text(params)
    bad = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "error: " in bad.stderr and "conditions.csv: data row 4" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert (repo / "data/interim/events.parquet").read_bytes() == before
    leftovers = [p.name for p in (repo / "data").iterdir() if p.name.startswith(".")]
    assert leftovers == []
