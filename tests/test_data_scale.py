"""docs/tools/data_scale.py on the real DAG: one `dvc exp run` per cohort size in a copy of the tiny
pipeline, then the page and plot from `dvc exp show --json` (issue 13, data-scale curve)."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT
from tiny_repo import copy_built, run


@pytest.mark.slow
def test_one_experiment_per_size_and_a_page(tiny_pipeline, tmp_path):
    repo = copy_built(tiny_pipeline, tmp_path / "repo")
    for k, v in (("user.email", "t@t"), ("user.name", "t")):
        run(["git", "config", k, v], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny pipeline run"], repo)
    script = str(ROOT / "docs/tools/data_scale.py")
    # 40 is the committed run's size (its experiment runs nothing); 46 is a new, larger cohort
    run([sys.executable, script, "run", "--sizes", "46", "40"], repo, timeout=1800)
    run([sys.executable, script, "report", "--out", "scale.md"], repo)
    page = (repo / "scale.md").read_text()
    assert "| 40 | " in page and "| 46 | " in page
    assert page.index("| 40 | ") < page.index("| 46 | ")      # rows by cohort size
    assert "pre-training's gain (BEHRT full − scratch)" in page
    assert (repo / "scale.png").stat().st_size > 5000
    shown = json.loads(run(["dvc", "exp", "show", "--json", "--no-pager"], repo))
    revs = {r.get("name"): r["rev"] for c in shown for e in c.get("experiments") or []
            for r in e.get("revs") or []}
    assert {"scale-40", "scale-46"} <= set(revs)
    # the 46-patient experiment ran its data stages on 46 patients (read from its commit:
    # metrics/sequences.json is a stage output, the DVC metric is only the headline)
    import dvc.api

    seq = json.loads(dvc.api.read("metrics/sequences.json", repo=str(repo), rev=revs["scale-46"]))
    assert seq["patients"] == 46


def test_bad_sizes_are_refused(tmp_path):
    import subprocess

    p = subprocess.run([sys.executable, str(ROOT / "docs/tools/data_scale.py"), "run", "--sizes",
                        "0", "250"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode != 0 and "--sizes: [0]" in p.stderr


def test_report_from_finished_checkouts(tiny_pipeline, tmp_path):
    """`report --dirs`: the page from finished runs side by side (worktrees, pods' clones),
    the size read from metrics/synthesize.json; a size twice or an unfinished run is refused."""
    import subprocess

    script = [sys.executable, str(ROOT / "docs/tools/data_scale.py"), "report"]
    out = tmp_path / "scale.md"
    run([*script, "--out", str(out), "--dirs", str(tiny_pipeline)], tmp_path)
    page = out.read_text()
    assert "| 40 | " in page and str(tiny_pipeline) in page
    # the synthetic outcome has an oracle: its headroom over the best count model is a column;
    # the neural pairs' interval half-widths (issue 12's 0.02) are a table
    assert "| headroom (oracle − best count) |" in page
    assert "| behrt_full − behrt_scratch |" in page
    assert out.with_suffix(".png").stat().st_size > 5000
    twice = subprocess.run([*script, "--out", str(out), "--dirs", str(tiny_pipeline),
                            str(tiny_pipeline)], capture_output=True, text=True)
    assert twice.returncode != 0 and "both have 40 patients" in twice.stderr
    (tmp_path / "unfinished").mkdir()
    bad = subprocess.run([*script, "--out", str(out), "--dirs", str(tmp_path / "unfinished")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "metrics/evaluate.json" in bad.stderr


def test_points_of_different_outcomes_are_refused_and_other_differences_listed():
    """A data-scale curve compares one question at several sizes: runs of two outcomes are
    refused; any other param that differs (besides data.* and runtime.*) is named on the page."""
    sys.path.insert(0, str(ROOT / "docs" / "tools"))
    from data_scale import differing

    def point(name, outcome, patience, threads):
        return {"name": name, "params": {
            "data": {"patients": 1}, "outcome": {"name": outcome, "landmark": {"n": 3}},
            "train": {"patience": patience}, "runtime": {"threads": threads}}}

    same = {250: point("a", "x", 8, 1), 500: point("b", "x", 5, 2)}
    assert differing(same) == {"train.patience": {250: 8, 500: 5}}
    with pytest.raises(SystemExit, match=r"outcome.name: 'x' \(a\), 'y' \(b\)"):
        differing({250: point("a", "x", 8, 1), 500: point("b", "y", 8, 1)})
