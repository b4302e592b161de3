"""bench/check_lock.py (issue 14): a fresh clone recomputes the data stages and compares them
with the committed dvc.lock. Here on a small repository whose params read the real export
unmc-v3.2 (``data.source``: no generation), with a committed lock made by ``dvc repro`` and
then tampered with: a stale code dep, a wrong output hash, a wrong directory hash whose
manifest names one changed file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, export_dir

STAGES = ("synthesize", "corpus", "ingest", "sequences", "outcomes")


def run(cmd, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(Path(cwd) / "src"), "DVC_NO_ANALYTICS": "1"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert res.returncode == 0, f"{cmd}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def commit(repo: Path, msg: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", msg], repo)


@pytest.mark.slow
def test_check_lock_reports_each_stage(tmp_path):
    source = export_dir("unmc-v3.2")
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("data/", "metrics/", "plots/", "models/")):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    (repo / "dvc.lock").unlink(missing_ok=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = str(source)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    commit(repo, "copy")
    run(["dvc", "repro", *STAGES], repo)
    commit(repo, "lock")

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    st = lock["stages"]
    dep = next(d for d in st["ingest"]["deps"] if d["path"] == "stage-code/ingest.md5")
    dep["md5"] = "0" * 32                                   # committed without re-running
    metrics = next(o for o in st["outcomes"]["outs"] if o["path"] == "metrics/outcomes.json")
    metrics["md5"] = "1" * 32
    out = next(o for o in st["outcomes"]["outs"] if o["path"] == "data/processed/outcomes")
    cache = repo / ".dvc/cache/files/md5"
    manifest = json.loads((cache / out["md5"][:2] / out["md5"][2:]).read_text())
    for e in manifest:                                      # another machine's outcomes
        if e["relpath"] == "outcomes.parquet":
            e["md5"] = "2" * 32
    text = json.dumps(manifest)
    fake = hashlib.md5(text.encode()).hexdigest() + ".dir"
    (cache / fake[:2]).mkdir(exist_ok=True)
    (cache / fake[:2] / fake[2:]).write_text(text)
    out["md5"] = fake
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    commit(repo, "tampered lock")

    res = run([sys.executable, str(ROOT / "bench/check_lock.py"), "--repo", str(repo)],
              ROOT, check=False)
    report = res.stdout
    print(report)
    assert res.returncode == 1, report + res.stderr
    lines = {ln.split()[0]: ln for ln in report.splitlines() if ln.split()[:1] in
             [[s] for s in STAGES]}
    assert "describes the commit" in lines["synthesize"] and "outputs match" in lines["synthesize"]
    assert "stale: stage-code/ingest.md5" in lines["ingest"] and "outputs match" in lines["ingest"]
    assert "outputs match" in lines["sequences"]
    assert "outputs MISMATCH" in lines["outcomes"]
    assert "metrics/outcomes.json: committed 111" in report
    assert "data/processed/outcomes: committed" in report and "files: outcomes.parquet" in report
    assert "its inputs already differ" not in report
    assert run(["git", "status", "--porcelain"], repo).stdout == ""


def _checkout(root: Path, files: dict[str, bytes], metrics: dict) -> Path:
    """A checkout as `dvc repro` leaves it: dvc.lock naming a directory output (its manifest
    and files in .dvc/cache/files/md5) and a metrics file."""
    cache = root / ".dvc/cache/files/md5"

    def put(data: bytes) -> str:
        md5 = hashlib.md5(data).hexdigest()
        (cache / md5[:2]).mkdir(parents=True, exist_ok=True)
        (cache / md5[:2] / md5[2:]).write_bytes(data)
        return md5

    entries = [{"relpath": k, "md5": put(v)} for k, v in sorted(files.items())]
    manifest = json.dumps(entries).encode()
    d = put(manifest) + ".dir"
    (cache / d[:2] / d[2:]).write_bytes(manifest)
    m = put(json.dumps(metrics).encode())
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": {
        "cmd": "x", "outs": [{"path": "models/train", "md5": d}, {"path": "metrics/train.json",
                                                                  "md5": m}]}}}))
    return root


def test_compare_two_checkouts_tells_weights_from_timings(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import check_lock

    w = {"model.safetensors": b"weights", "config.json": b"{}"}
    a = _checkout(tmp_path / "a", w, {"lstm.c": 0.7, "lstm.train_seconds": 10.0})
    b = _checkout(tmp_path / "b", w, {"lstm.c": 0.7, "lstm.train_seconds": 12.5})
    assert check_lock.compare_checkouts(a, b, None) == 0          # timings differ, nothing else
    c = _checkout(tmp_path / "c", {**w, "model.safetensors": b"other"},
                  {"lstm.c": 0.71, "lstm.train_seconds": 10.0})
    assert check_lock.compare_checkouts(a, c, None) == 1
    out = subprocess.run([sys.executable, str(ROOT / "bench/check_lock.py"), "--compare",
                          str(a), str(c)], capture_output=True, text=True).stdout
    assert "models/train/model.safetensors: DIFFERS" in out
    assert "metrics/train.json: DIFFERS (lstm.c)" in out and "config.json" not in out


def test_a_listing_that_no_longer_matches_its_code_is_stale(tmp_path):
    """Stage code's listings are outputs tracked by git: the check compares them like code,
    and each listed file with its md5 (an edit committed without `dvc repro` is stale)."""
    from conftest import script

    cl = script("bench/check_lock.py")
    (tmp_path / "stage-code").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    listing = f"{hashlib.md5(b'x = 1' + bytes([10])).hexdigest()}  a.py\n"
    (tmp_path / "stage-code/s.md5").write_text(listing)
    run(["git", "init", "-q"], tmp_path)
    commit(tmp_path, "code")
    entry = {"deps": [{"path": "stage-code/s.md5",
                       "md5": hashlib.md5(listing.encode()).hexdigest()}]}
    produced = {"stage-code/s.md5"}
    assert cl.stale_entries(entry, tmp_path, produced) == []
    (tmp_path / "a.py").write_text("x = 2\n")
    commit(tmp_path, "an edit, no repro")
    assert cl.stale_entries(entry, tmp_path, produced) == ["stage-code/s.md5 (lists a.py as it was)"]
