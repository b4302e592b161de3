"""A code change never resumes a stale checkpoint (issue 25).

The run key of every training stage hashes its code (the stage script and every ehrseq module it
imports, :func:`ehrseq.imports.code_fingerprint`). Run on a copy of the code, as a user who
edits it would: a changed loss or an added layer trains afresh, restoring the code resumes the
old run; the runs of a stage are kept to ``runtime.checkpoint_keep_runs``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_tune import toy_workspace

from ehrseq.imports import code_fingerprint
from ehrseq.train.checkpoint import finished_runs, hold_run, list_checkpoints, prune_runs

ROOT = Path(__file__).resolve().parents[1]
STAGE = "train_survival"
LOSS = "        return loss.mean()\n"


def code_copy(dest: Path) -> Path:
    """The project's src/ and stages/, copied: a checkout the test may edit."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", dest / "src", ignore=skip)
    shutil.copytree(ROOT / "stages", dest / "stages", ignore=skip)
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


def run(code: Path, ws: Path) -> str:
    """``python stages/train_survival.py`` of the copy ``code`` in workspace ``ws``; stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code / "src")}
    r = subprocess.run([sys.executable, str(code / f"stages/{STAGE}.py")], cwd=ws, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def weights(ws: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((ws / "models" / STAGE).glob("*.safetensors")))


def runs(ws: Path) -> list[Path]:
    return sorted((ws / "checkpoints" / STAGE).iterdir())


def test_the_fingerprint_follows_what_runs_not_comments(tmp_path):
    code = code_copy(tmp_path / "code")
    script = code / f"stages/{STAGE}.py"
    base = _fresh(script, code)
    assert base == code_fingerprint(script, code / "src") and len(base) == 64
    losses = code / "src/ehrseq/models/losses.py"
    edit(losses, LOSS, "        # the mean over the batch\n" + LOSS)   # a comment: same program
    assert _fresh(script, code) == base
    edit(code / "src/ehrseq/evaluate/report.py", '"""The benchmark table',
         '"""Not imported by the stage. The benchmark table')
    assert _fresh(script, code) == base   # a module the stage does not import
    edit(losses, LOSS, "        return 0.25 * loss.mean()\n")
    assert _fresh(script, code) != base   # the loss it trains with
    edit(losses, "        return 0.25 * loss.mean()\n", LOSS)
    assert _fresh(script, code) == base
    edit(script, "import logging\n", "import logging\nimport math  # noqa: F401\n")
    assert _fresh(script, code) != base   # the stage script itself


def _fresh(script: Path, code: Path) -> str:
    from ehrseq.imports import _fingerprint

    _fingerprint.cache_clear()
    return code_fingerprint(script, code / "src")


def test_code_change_retrains_and_restoring_the_code_resumes(tmp_path):
    code, ws = code_copy(tmp_path / "code"), tmp_path / "ws"
    toy_workspace(ws)
    err = run(code, ws)
    assert "resuming from" not in err
    old = weights(ws)
    (first,) = runs(ws)
    for lr_dir in first.iterdir():   # a finished run keeps its last checkpoint only
        if lr_dir.is_dir():
            assert len(list_checkpoints(lr_dir)) == 1, lr_dir

    losses = code / "src/ehrseq/models/losses.py"
    edit(losses, LOSS, "        return 0.25 * loss.mean()\n")   # the change
    err = run(code, ws)
    assert "resuming from" not in err, err[-2000:]     # trained afresh ...
    assert weights(ws) != old                           # ... into other weights
    assert len(runs(ws)) == 2 and first in runs(ws)     # the old run is kept (keep_runs 3)

    edit(losses, "        return 0.25 * loss.mean()\n", LOSS)   # the code restored
    err = run(code, ws)
    assert f"resuming from checkpoints/{STAGE}/{first.name}/" in err, err[-2000:]
    assert weights(ws) == old

    # a parameter-bearing layer: a new run, no crash, no half-load of the old weights
    edit(code / "src/ehrseq/models/lstm_survival.py",
         "        self.head = nn.Linear(c.hidden_dim, c.n_bins)\n",
         "        self.head = nn.Linear(c.hidden_dim, c.n_bins)\n"
         "        self.extra = nn.Linear(c.hidden_dim, c.hidden_dim)\n")
    err = run(code, ws)
    assert "resuming from" not in err and "Missing key" not in err, err[-2000:]
    assert len(runs(ws)) == 3


@pytest.mark.slow   # the rule itself: test_prune_keeps_the_newest_and_never_a_held_run
def test_only_the_newest_runs_are_kept(tmp_path):
    """``runtime.checkpoint_keep_runs: 1``: a finished run removes the stage's older ones."""
    code, ws = code_copy(tmp_path / "code"), tmp_path / "ws"
    toy_workspace(ws)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["runtime"]["checkpoint_keep_runs"] = 1
    params["tune"]["lrs"] = None
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    run(code, ws)
    (first,) = runs(ws)
    edit(code / "src/ehrseq/models/losses.py", LOSS, "        return 0.5 * loss.mean()\n")
    run(code, ws)
    (second,) = runs(ws)
    assert second != first and not first.exists()
    assert finished_runs(ws / "checkpoints") == [f"{STAGE}/{second.name}"]


def test_prune_keeps_the_newest_and_never_a_held_run(tmp_path):
    stage = tmp_path / "stage"
    keys = [f"{i:016x}" for i in range(5)]
    for i, k in enumerate(keys):
        (stage / k / "lr_0.1" / "000001-step000000001").mkdir(parents=True)
        (stage / k / ".used").touch()
        os.utime(stage / k / ".used", (1000 + i, 1000 + i))   # key 4 the newest
    (stage / "not-a-run").mkdir()
    with hold_run(stage / keys[0]):   # a run in progress in "another process"
        os.utime(stage / keys[0] / ".used", (1, 1))           # ... and the oldest by use
        removed = prune_runs(stage, current=keys[2], keep=2)
    assert sorted(p.name for p in removed) == [keys[1], keys[3]]
    assert sorted(p.name for p in stage.iterdir()) == sorted([keys[0], keys[2], keys[4],
                                                              "not-a-run"])
    # the held run, released, was used last: now key 4 is the oldest beside the current one
    assert [p.name for p in prune_runs(stage, current=keys[2], keep=2)] == [keys[4]]


def test_keep_runs_must_be_positive():
    from pydantic import ValidationError

    from ehrseq.params import RuntimeParams

    with pytest.raises(ValidationError, match="checkpoint_keep_runs"):
        RuntimeParams(checkpoint_keep_runs=0)
