"""The tiny pipeline the DAG tests share: a copy of this repository with fast training params,
built (`dvc repro`) once per test session by the ``tiny_pipeline`` fixture (tests/conftest.py)
and copied, with its cache, git history and run-cache, into each module that needs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ROOT


def run(cmd, cwd, **kw):
    # the copy's own src/ first: the editable install points at the working tree
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": f"{Path(cwd) / 'src'}"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def copy_repo(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("data/", "metrics/", "plots/", "models/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    (dst / "dvc.lock").unlink(missing_ok=True)
    run(["git", "init", "-q"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dst)
    return dst


def tiny_params(repo: Path, patients: int = 40) -> None:
    """Fast training settings for a cohort of ``patients`` (every check still meaningful)."""
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["data"]["patients"] = patients
    p["train"].update(epochs=2, batch_size=16)
    p["report"]["bootstrap"] = 50
    p["outcome"]["synthetic"]["signal"] = 3.0   # a strong truth: scores are checkable on 40
    p["cluster"]["min_test_patients"] = 4       # 40 patients: about 6 in the test split
    # one learning-curve point below the ~28 training patients, one BEHRT mode (the rest of
    # the grid runs the same scripts; tests/test_learning_curve.py scores a grid)
    p["curve"] = {"labelled": [8], "replicates": [0], "behrt_modes": ["full"]}
    # one training per stage (tests/test_tune.py covers the tuned stages); and the sweep test
    # in tests/test_pipeline.py sweeps finetune.lr, which reaches training only with tuning off
    p["tune"] = {"lrs": None}
    p["sequences"]["max_visits"] = 32     # short sequences: every model trains in seconds
    # training checkpoints are mirrored and resumed by tests/test_pod_resume.py; in the S3
    # scenario of tests/test_remote.py they would push every epoch of every model into moto's
    # memory on a 2-core machine, and that file tests the run-cache
    p["runtime"]["mirror_checkpoints"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def copy_built(src: Path, dst: Path) -> Path:
    """A copy of a built tiny pipeline (workspace, dvc.lock, cache, git), to change freely."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    return dst
