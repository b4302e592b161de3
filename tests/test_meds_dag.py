"""The whole DAG on a MEDS dataset that this project did not write (issue 15).

meds-testing-helpers' generator makes a MEDS dataset (random codes ``static//i`` and
``dynamic//i``, births, deaths, numeric values, train/tuning/held_out shards, an empty
codes.parquet); ``data.source`` points at its root and ``outcome.name`` is ``mortality``
(``MEDS_DEATH``; the synthetic outcome needs Synthea's codes). ``dvc repro`` in a temporary
copy of this repository must run every stage: ingest from MEDS, sequences, outcomes,
baselines, every model, embeddings, clustering, evaluate, and the MEDS export.

Small, fast training settings as in tests/test_pipeline.py; the cohort is large enough for the
default ``cluster.min_test_patients`` (no check is lowered for it).
"""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import ROOT
from test_meds import _generated_meds
from tiny_repo import copy_repo, run, tiny_params

SUBJECTS = 300  # ~45 held-out subjects: above the default cluster.min_test_patients (20)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    src = tmp_path_factory.mktemp("foreign") / "meds"
    _generated_meds(src, SUBJECTS)
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    tiny_params(repo)
    from ehrseq.params import resolved_params

    defaults = resolved_params(ROOT / "params.yaml")   # the file's keys over the schema's
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["data"]["source"] = str(src)
    p["outcome"]["name"] = "mortality"
    # tiny_params lowers it for its 40 patients; this cohort meets the default
    p["cluster"]["min_test_patients"] = defaults["cluster"]["min_test_patients"]
    p["cluster"].update(seeds=1, bootstrap=0, kmeans_k=[2, 3, 4])  # speed only
    p["runtime"]["threads"] = 1   # a shared machine
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run(["dvc", "repro"], repo, timeout=3600)
    return repo


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:no explicit representation of timezones")
def test_whole_dag_runs_on_a_foreign_meds_dataset(repo):
    from dvc.repo import Repo

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    with Repo(str(repo)) as r:       # foreach and matrix stages expanded by DVC itself
        expected = {s.name for s in r.index.stages}
    assert set(lock) == expected

    ing = json.loads((repo / "metrics/ingest.json").read_text())
    assert ing["patients"] == SUBJECTS and ing["events"] > 0
    assert (repo / "data/raw/synthea/metadata").is_dir()     # the MEDS root, copied as is
    assert not (repo / "data/raw/synthea/patients.csv").exists()

    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert ev["test.patients"] > 0
    for model in ("cox", "lstm"):
        c = ev[f"{model}.c_harrell"]
        assert math.isfinite(c) and 0.0 <= c <= 1.0, (model, c)

    meds = repo / "data/meds"
    assert (meds / "metadata/dataset.json").is_file()
    assert list((meds / "data").rglob("*.parquet"))
    assert list((meds / "task_labels").glob("mortality_*d/labels.parquet"))
    assert list((repo / "data/meds_predictions").rglob("lstm.parquet"))
