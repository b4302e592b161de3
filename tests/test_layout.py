"""The library's layout and the DAG's wiring (issue 11), checked from the code itself
(docs/tools/layout.py prints the same report):

- no import cycle, no lower layer importing a higher one;
- every src module a stage script imports (transitively, lazy imports included) is among that
  stage's dvc.yaml deps, so no change to the code can leave a stale dvc.lock;
- changing a machine setting (``runtime.*``) or a report setting (``report.*``) makes
  `dvc status` list no training stage (report: only ``evaluate``); a setting that changes
  results (``train.lr``) does list them (so the check can fail);
- the training stage scripts stay small: the skeleton lives in src/ehrseq/train/recipe.py.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "tools"))
import layout  # noqa: E402

TRAINING = ("train_survival", "pretrain_behrt", "finetune_behrt", "train_med2vec",
            "finetune_med2vec", "train_trajectory")


def test_no_import_cycle_and_no_upward_import():
    g = layout.graph()
    assert layout.cycles(g) == []
    assert layout.upward(g) == []
    # the check can fail: an import from data/ into evaluate/ is upward
    assert layout.upward({"ehrseq.data.x": {"ehrseq.evaluate.y"}}) == [
        ("ehrseq.data.x", "ehrseq.evaluate.y")]
    assert layout.cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]


def test_every_imported_module_is_a_stage_dep():
    assert layout.missing_deps() == {}
    assert layout.stale_deps() == {}
    # evaluate never needs model or training code: it reads predictions
    mods = {m for m in layout.closure(ROOT / "stages/evaluate.py")}
    assert not [m for m in mods if m.startswith(("ehrseq.models", "ehrseq.train"))], mods


def test_training_stages_are_small_and_share_one_recipe():
    for name in TRAINING:
        text = (ROOT / f"stages/{name}.py").read_text()
        assert "train_stage(" in text, name
        assert "matplotlib" not in text and "plt." not in text, name   # no plots in stages
        assert "train.loop" not in text and "distributed" not in text, name  # the recipe fits
    for name in TRAINING[:-1]:
        assert len((ROOT / f"stages/{name}.py").read_text().splitlines()) <= 100, name


def _status(repo: Path) -> dict[str, str]:
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        st = r.status()
    return {name.split(":")[-1].split("@")[0]: yaml.safe_dump(v) for name, v in st.items()}


@pytest.fixture(scope="module")
def dvc_files(tmp_path_factory):
    """The project's dvc.yaml, dvc.lock and params.yaml in a DVC project without data: `dvc
    status` then compares params.yaml with what dvc.lock recorded."""
    repo = tmp_path_factory.mktemp("dag")
    for f in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(ROOT / f, repo / f)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    return repo, _status(repo)


def _changed_by(dvc_files, key: str, value) -> set[str]:
    """Stages whose `dvc status` changes when ``key`` is set to ``value``."""
    repo, base = dvc_files
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section, name = key.split(".", 1)
    params[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        return {s for s, text in _status(repo).items() if text != base.get(s)}
    finally:
        shutil.copy(ROOT / "params.yaml", repo / "params.yaml")


@pytest.mark.parametrize("key, value", [
    ("runtime.device", "cpu"), ("runtime.amp", False), ("runtime.compile", True),
    ("runtime.num_workers", 3), ("runtime.threads", 7), ("runtime.checkpoint_every_steps", 5),
    ("runtime.checkpoint_every_minutes", 1.5), ("runtime.checkpoint_dir", "/elsewhere"),
    ("runtime.mirror_checkpoints", False),
    ("report.gpu_hourly_usd", 9.5), ("report.bootstrap", 17), ("report.seed", 3),
])
def test_machine_and_report_settings_retrain_nothing(dvc_files, key, value):
    changed = _changed_by(dvc_files, key, value)
    assert changed <= ({"evaluate"} if key.startswith("report.") else set()), changed
    if key.startswith("report."):
        assert changed == {"evaluate"}


def test_a_result_setting_retrains(dvc_files):
    changed = _changed_by(dvc_files, "train.lr", 0.0123)
    assert set(TRAINING) <= changed and "evaluate" not in changed, changed


def test_stage_code_lists_what_each_script_runs():
    """A listing (md5sum's format) names the script, every module it imports transitively and
    their packages' __init__, each with the md5 of its bytes; evaluate's names no model."""
    from ehrseq import imports

    text = imports.listing(ROOT / "stages/evaluate.py", ROOT, ROOT / "src")
    rows = [line.split("  ", 1) for line in text.splitlines()]
    files = [f for _, f in rows]
    assert files[0] == "stages/evaluate.py"
    assert {"src/ehrseq/__init__.py", "src/ehrseq/evaluate/__init__.py",
            "src/ehrseq/evaluate/report.py", "src/ehrseq/params.py"} <= set(files)
    assert not [f for f in files if f.startswith(("src/ehrseq/models/", "src/ehrseq/train/"))]
    for md5, f in rows:
        assert md5 == hashlib.md5((ROOT / f).read_bytes()).hexdigest(), f


def test_an_edit_reruns_exactly_the_stages_that_import_it(tmp_path):
    """`dvc repro code` after an edit to models/behrt.py changes the listing of the scripts
    that import it, so `dvc status` shows exactly their stages changed (BEHRT's, the
    trajectory model's, embed and cluster), not the baselines', the LSTM's or Med2Vec's."""
    from tiny_repo import run

    for d in ("stages", "src/ehrseq", "stage-code"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / f, tmp_path / f)
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], tmp_path)
    base = _status(tmp_path)
    with open(tmp_path / "src/ehrseq/models/behrt.py", "a") as f:
        f.write("\n# an edit\n")
    run([sys.executable, "-m", "dvc", "repro", "-q", "code"], tmp_path)
    after = _status(tmp_path)
    changed = {s for s in after if after[s] != base.get(s)} - {"code"}
    assert changed == {"pretrain_behrt", "finetune_behrt", "train_trajectory", "embed",
                       "cluster", "curve_behrt"}, changed
