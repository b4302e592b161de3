"""Shared fixtures. Real Synthea exports live in ../shared/data/synthea-csv beside the clone
(CI has them; users don't): tests that need them skip cleanly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CSV = Path(os.environ.get("EHRSEQ_SHARED_CSV", ROOT.parent / "shared/data/synthea-csv"))
EXPORTS = ("dbt-synthea-v3.0", "unmc-v3.2")


def export_dir(name: str) -> Path:
    d = SHARED_CSV / name
    if not (d / "patients.csv").is_file():
        pytest.skip(f"real Synthea export {d} not present")
    return d


def script(path: str | Path, name: str | None = None):
    """The Python file ``path`` (a stage in stages/, a tool in docs/tools/; relative to the
    repository root) imported as a module, without running its ``__main__`` block."""
    import importlib.util

    path = ROOT / path
    spec = importlib.util.spec_from_file_location(name or f"script_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ingested(export: str, root: Path) -> Path:
    """The real export ``export`` through ingest (``root/interim``) and sequences with the
    default params (``root/seq``); returns ``root``."""
    from ehrseq.data.ingest import ingest
    from ehrseq.data.sequences import build_sequences
    from ehrseq.params import SequencesParams

    (root / "interim").mkdir()
    ingest(export_dir(export), root / "interim")
    build_sequences(root / "interim", root / "seq", SequencesParams())
    return root


@pytest.fixture(params=EXPORTS)
def real_export(request) -> Path:
    return export_dir(request.param)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op torch thread is faster and immune to a busy machine.
    Model test modules use it for every test (``pytestmark``)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """The whole default DAG, run once per session (`dvc repro`) on 40 generated patients with
    fast training params (tests/tiny_repo.py). Modules copy it (``copy_built``) and never
    change this one: tests/test_pipeline.py and tests/test_remote.py share the one run."""
    from tiny_repo import copy_repo, run, tiny_params

    repo = copy_repo(tmp_path_factory.mktemp("tiny-pipeline"))
    tiny_params(repo)
    run(["dvc", "repro"], repo, timeout=1800)   # 363 s on 2 idle cores; a cap, not a target
    return repo
