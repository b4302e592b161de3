"""Smoke test of the real DAG: `dvc repro` on a tiny generated cohort in a temporary copy of
this repository (the session's ``tiny_pipeline``), then a second `dvc repro` that runs nothing,
a queued sweep, then a forced re-run of the data stages that must reproduce the same hashes
(determinism)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_repo import copy_built, run

DATA_STAGES = ("synthesize", "corpus", "ingest", "sequences")


def lock_hashes(repo: Path, stages) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {s: [(o["path"], o["md5"]) for o in lock[s]["outs"]] for s in stages}


@pytest.fixture(scope="module")
def repo(tiny_pipeline, tmp_path_factory):
    return copy_built(tiny_pipeline, tmp_path_factory.mktemp("repo"))


def test_repro_runs_every_stage(repo):
    from dvc.repo import Repo

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    with Repo(str(repo)) as r:       # foreach and matrix stages expanded by DVC itself
        stages = list(r.index.stages)
        expected = {s.name for s in stages}
        metrics = [m.fs_path for s in stages for m in s.metrics]
    assert set(lock) == expected and any(s.startswith("curve_behrt@") for s in expected)
    for path in metrics:
        assert Path(path).is_file(), path
    m = json.loads((repo / "metrics/sequences.json").read_text())
    assert m["patients"] == 40 and m["vocab_size"] > 20
    tm = json.loads((repo / "metrics/train_survival.json").read_text())
    assert tm["lstm.n_params"] > 0
    om = json.loads((repo / "metrics/outcomes.json").read_text())
    assert om["audit_input_events"] > 0 and om["audit_input_events_known_after_landmark"] == 0
    assert (repo / "models/train_survival/model.safetensors").is_file()
    assert (repo / "plots/evaluate/cox_calibration.png").stat().st_size > 1000
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert "lstm.c_harrell" not in tm          # training stages predict; evaluate scores
    from ehrseq.train.recipe import RUN_STATS  # every training stage: the same statistics
    for f, name in (("train_survival", "lstm"), ("pretrain_behrt", "behrt"),
                    ("finetune_behrt/lora", "behrt_lora"), ("train_med2vec", "med2vec"),
                    ("finetune_med2vec", "med2vec"), ("train_trajectory", "trajectory")):
        stats = json.loads((repo / f"metrics/{f}.json").read_text())
        assert {f"{name}.{k}" for k in RUN_STATS} <= set(stats), f
    assert ev["test.landmarks"] > ev["test.patients"] > 0 and ev["lstm.n_params"] > 0
    # the headline, the only DVC metric: a few numbers per sequence model, read from the detail
    head = json.loads((repo / "metrics/summary.json").read_text())
    from ehrseq.evaluate.report import HEADLINE_MODEL_KEYS
    models = {k.split(".")[0] for k in head} - {"test", "oracle", "best_count", "headroom",
                                                 "headroom_lo", "headroom_hi"}
    assert models == {"lstm", "med2vec", "behrt_full", "behrt_lora", "behrt_probe",
                      "behrt_scratch"}, models       # no count model, no curve point
    assert len(head) <= 13 + len(models) * len(HEADLINE_MODEL_KEYS)
    assert head["lstm.c"] == ev["lstm.c_harrell"] and head["oracle.c"] == ev["oracle.c_harrell"]
    assert head["lstm.vs_best_count"] == ev["delta.lstm-best_count.delta"]
    assert head["best_count.model"] == ev["best_count.model"]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo))
    assert set(next(iter(shown.values()))["data"]) == {"metrics/summary.json"}, shown
    # the label-efficiency curve: every family at 8 labelled patients and the main run
    lc = json.loads((repo / "metrics/learning_curve.json").read_text())
    n_all = lc["curve.n_all"]
    skipped = [k for k in lc if k.startswith("curve.skipped.")]   # a subset without events
    for fam in ("cox", "best_count", "lstm", "med2vec", "behrt_full"):
        for n in (8, n_all):
            assert f"curve.{fam}.n{n}.c_harrell" in lc or any(k.endswith(f"/n{n}_r0")
                                                                for k in skipped), (fam, n)
    assert "curve.crossover.behrt_full-best_count" in lc
    assert (repo / "plots/evaluate/learning_curve.png").stat().st_size > 1000
    for key in ("med2vec.c_harrell", "behrt_lora.c_harrell", "delta.behrt_full-behrt_scratch.lo",
                "delta.behrt_lora-behrt_full.delta", "delta.med2vec-lstm.p_not_better"):
        assert key in ev, key
    assert "## Paired comparisons" in (repo / "plots/evaluate/report.md").read_text()
    # representation probes: every embedding x every planted feature of the scenario
    assert "## Which representation carries" in (repo / "plots/evaluate/report.md").read_text()
    assert "probe.lstm.hypertension" in ev and "probe.tfidf_svd.age" in ev
    assert ev["probe.tfidf_svd.age"] is None or ev["probe.tfidf_svd.age"] <= 1   # R²
    # values, not ranges: KM cannot rank, the truth and Cox do, nobody beats the truth
    assert ev["km.c_harrell"] == 0.5
    assert ev["oracle.c_harrell"] > 0.7 and ev["cox.c_harrell"] > 0.6
    against = [k for k in ev if k.startswith("delta.") and k.endswith("-oracle.lo")]
    assert len(against) >= 8 and all(ev[k] <= 0 for k in against), \
        {k: ev[k] for k in against}
    emb = json.loads((repo / "metrics/embed.json").read_text())
    assert {"behrt_cls.dim", "behrt_mean.dim", "med2vec.dim"} <= set(emb)


def _leaves(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def test_exp_show_has_under_150_columns(repo):
    """`dvc exp show --csv` of the default run stays under 150 columns (issue 28): DVC's own 5,
    the headline, the keys of params.yaml and one column per dependency path: each stage
    depends on its script's code listing (stage-code/), not on each module it imports."""
    from conftest import ROOT

    header = run(["dvc", "exp", "show", "--csv", "--no-fetch"], repo).splitlines()[0]
    cols = header.split(",")
    # the keys tiny_params sets that the committed params.yaml leaves to the schema are
    # columns here and not on the default run (the same DAG, the same headline)
    extra = _leaves(yaml.safe_load((repo / "params.yaml").read_text())) - _leaves(
        yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert extra and extra <= set(cols), extra
    assert len(cols) - len(extra) < 150, (len(cols), len(extra), cols)
    code = [c for c in cols if c.startswith(("src/", "stages", "stage-code/"))]
    assert sorted(code) == sorted(["src/ehrseq", "stages"] + [
        f"stage-code/{p.stem}.md5" for p in (ROOT / "stages").glob("*.py") if p.stem != "code"])
    assert "lstm.c" in cols and "model.size" in cols


def test_second_repro_runs_nothing(repo):
    out = run(["dvc", "repro"], repo)
    assert "Running stage" not in out, out
    status = run(["dvc", "status"], repo)
    assert "up to date" in status, status


def queue_wait(repo: Path, timeout: float = 900) -> str:
    """Poll ``dvc queue status`` until nothing is queued or running; return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        out = run(["dvc", "queue", "status"], repo)
        if not any(w in out for w in ("Queued", "Running")):
            return out
        assert time.monotonic() < deadline, f"queue still busy after {timeout} s:\n{out}"
        time.sleep(3)


def sweep_diagnosis(repo: Path) -> str:
    """What DVC kept of a sweep, for a failure message: the experiment refs in git, ``dvc exp
    list`` and the lines of the queue workers' logs that say a point was not collected (DVC
    logs a failed collection and still reports the point ``Success``)."""
    refs = subprocess.run(["git", "for-each-ref", "refs/exps"], cwd=repo, capture_output=True,
                          text=True).stdout
    exps = subprocess.run([str(Path(sys.executable).parent / "dvc"), "exp", "list",
                           "--all-commits"], cwd=repo, capture_output=True, text=True)
    logs = [f"{p.name}: {line}" for p in sorted((repo / ".dvc/tmp/exps/celery").glob("*.out"))
            for line in p.read_text(errors="replace").splitlines()
            if any(w in line for w in ("ollect", "Error", "Traceback", "xception"))]
    return (f"refs/exps:\n{refs}\ndvc exp list:\n{exps.stdout}{exps.stderr}\n"
            "worker logs:\n" + "\n".join(logs[-40:]))


def test_queue_sweep_runs_each_point_once(repo):
    """The documented sweep (docs/training.md): a grid queued with one command, run by two
    workers; every point is an experiment with its own metrics, and the stages the swept
    param does not reach come from the run-cache instead of being trained again. The swept
    param (trajectory.pos_weight, which params.yaml leaves to the schema: DVC's ``++`` adds it)
    reaches one training stage: the mechanism is the same for any param, and this one keeps the
    test to one training per point."""
    base = json.loads((repo / "metrics/summary.json").read_text())
    run(["dvc", "exp", "run", "--queue", "-S", "++trajectory.pos_weight=2,5"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    status = queue_wait(repo)
    assert status.count("Success") == 2 and "Failed" not in status, status
    out = run(["dvc", "exp", "show", "--json", "--no-pager"], repo)
    points = {}
    for commit in json.loads(out):          # [workspace, baseline commit with its exps]
        for ex in (e for exp in commit.get("experiments") or [] for e in exp["revs"]):
            d = ex["data"]
            w = d["params"]["params.yaml"]["data"]["trajectory"]["pos_weight"]
            points[w] = {k: v["data"] for k, v in d["metrics"].items()}
    assert set(points) == {2, 5}, (points, sweep_diagnosis(repo))
    # the only DVC metric is the headline (metrics/summary.json)
    assert all(set(p) == {"metrics/summary.json"} for p in points.values()), points
    full = [p["metrics/summary.json"]["behrt_full.c"] for p in points.values()]
    assert all(0.0 <= c <= 1.0 for c in full)
    for p in points.values():    # the weight reaches neither the LSTM nor BEHRT: not re-trained
        for model in ("lstm", "behrt_full"):
            assert p["metrics/summary.json"][f"{model}.train_s"] == base[f"{model}.train_s"]
    for name in (line.split()[1] for line in status.splitlines() if "Success" in line):
        logs = run(["dvc", "queue", "logs", name], repo)
        assert "Running stage 'train_trajectory'" in logs   # each point trains its own weight
        assert "Stage 'train_survival' is cached - skipping run" in logs
        assert "Running stage 'train_survival'" not in logs
        assert "Running stage 'finetune_behrt@full'" not in logs


@pytest.mark.slow   # the same bytes are checked in the default run, faster: synthesize by
# tests/test_synthesize.py (any workers and shards), ingest/sequences/outcomes by
# tests/test_reproducible.py (any threads, SIMD and BLAS kernels)
def test_data_stages_deterministic(repo):
    before = lock_hashes(repo, DATA_STAGES)
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc/cache")
    run(["dvc", "repro", "--force", "--single-item", *DATA_STAGES], repo, timeout=900)
    assert lock_hashes(repo, DATA_STAGES) == before


def test_export_refuses_missing_predictions(tiny_pipeline, tmp_path):
    """Issue 28: `export_meds_predictions` on a workspace whose predictions are not all there
    (what `dvc repro --pull --allow-missing` left, treeverse/dvc#11099) stops naming what is
    missing and writes nothing; it used to export "0 models x 0 tasks" silently."""
    import os
    import subprocess
    import sys

    repo = copy_built(tiny_pipeline, tmp_path / "repo")
    before = sorted(p.relative_to(repo) for p in (repo / "data/meds_predictions").rglob("*"))
    shutil.rmtree(repo / "data/predictions/train_survival")
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    r = subprocess.run([sys.executable, "stages/export_meds.py", "predictions"], cwd=repo,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "data/predictions/train_survival" in r.stderr and "missing" in r.stderr, r.stderr
    after = sorted(p.relative_to(repo) for p in (repo / "data/meds_predictions").rglob("*"))
    assert after == before and before


def test_crossfit_folds_score_every_patient_once(tiny_pipeline, tmp_path):
    """Cross-fitting as DVC runs it (issue 27 part 4): crossfit.folds [0, 1] adds one variant
    per fold of every family, pre-training included; `dvc repro` runs those and the stages
    that read data/predictions alone (the main run's are up to date; the MEDS export of the
    test models writes the same files), and evaluate scores every landmark of the cohort
    once, each by the models of the fold that held its patient out."""
    import pandas as pd

    repo = copy_built(tiny_pipeline, tmp_path / "repo")
    before = json.loads((repo / "metrics/evaluate.json").read_text())
    export = lock_hashes(repo, ["export_meds_predictions"])["export_meds_predictions"][0]
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["crossfit"] = {"folds": [0, 1], "behrt_modes": ["full"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = run(["dvc", "repro"], repo, timeout=1200)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    families = ("baselines", "lstm", "med2vec_encoder", "med2vec", "pretrain_behrt")
    assert ran == {f"crossfit_{f}@{k}" for f in families for k in (0, 1)} | {
        "crossfit_behrt@full-0", "crossfit_behrt@full-1", "evaluate",
        "export_meds_predictions"}, ran   # its folder dep changed: it re-runs, same output
    assert lock_hashes(repo, ["export_meds_predictions"])["export_meds_predictions"][0] == export
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    table = pd.read_parquet(repo / "data/processed/outcomes/outcomes.parquet")
    assert ev["crossfit.folds"] == 2 and ev["crossfit.landmarks"] == len(table)
    assert ev["crossfit.patients"] == table["patient"].nunique()
    for model in ("best_count", "cox", "lstm", "med2vec", "behrt_full"):
        assert 0.0 <= ev[f"crossfit.{model}.c_harrell"] <= 1.0, model
    assert ev["crossfit.delta.behrt_full-best_count.half_width"] > 0
    assert ev["lstm.c_harrell"] == before["lstm.c_harrell"]   # the main run: untouched
    report = (repo / "plots/evaluate/report.md").read_text()
    assert "## Cross-fitted: every patient scored once" in report
    summary = json.loads((repo / "metrics/summary.json").read_text())   # what exp show prints
    assert summary["crossfit.folds"] == 2 and "crossfit.behrt_full.vs_best_count" in summary
    # each fold's pre-training read every patient but its held-out ones
    from ehrseq.data.folds import fold_of

    pats = pd.read_parquet(repo / "data/processed/sequences/patients.parquet")["patient"]
    from ehrseq.params import parse_params

    fold = fold_of(pats, 2, parse_params(p).sequences.split.salt)
    for k in (0, 1):
        m = json.loads((repo / f"metrics/crossfit/pretrain_behrt/f{k}.json").read_text())
        assert m["behrt.fold"] == k and m["behrt.folds"] == 2
        assert m["behrt.train_patients"] + m["behrt.val_patients"] == (fold != k).sum()
