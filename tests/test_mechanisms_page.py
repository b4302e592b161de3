"""docs/tools/mechanisms.py: the mechanism page (issue 27) from runs' outputs."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import script


def fake_run(root, effects, d_lstm, probe):
    """A finished run's two files the page reads: params.yaml and metrics/evaluate.json."""
    (root / "metrics").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"outcome": {"synthetic": {"scenario": "sequential", "effects": effects}}}))
    m = {"oracle.c_harrell": 0.7, "best_count.model": "gbm", "best_count.c_harrell": 0.6,
         "headroom": 0.1, "headroom_lo": 0.05, "headroom_hi": 0.15, "test.patients": 10,
         "test.events": 5, "lstm.c_harrell": 0.6 + d_lstm, "lstm.stage": "train_survival",
         "gbm.c_harrell": 0.6, "gbm.stage": "baselines",
         "delta.lstm-best_count.delta": d_lstm, "delta.lstm-best_count.lo": d_lstm - 0.02,
         "delta.lstm-best_count.hi": d_lstm + 0.02, "delta.lstm-oracle.delta": d_lstm - 0.1,
         "delta.lstm-oracle.lo": d_lstm - 0.12, "delta.lstm-oracle.hi": d_lstm - 0.08}
    for e in effects or []:
        m[f"probe.lstm.{e}"] = probe
    (root / "metrics/evaluate.json").write_text(json.dumps(m))
    return root


def test_page_has_a_column_per_mechanism_and_the_probes(tmp_path):
    mech = script("docs/tools/mechanisms.py")
    runs = [fake_run(tmp_path / "gap", ["short_gap"], 0.031, 0.42),
            fake_run(tmp_path / "all", None, -0.012, None)]
    out = tmp_path / "page.md"
    mech.main(["--runs", *map(str, runs), "--command", "by hand", "--out", str(out)])
    page = out.read_text()
    assert "| | `short_gap` | `all` |" in page                     # single ones first
    assert "| lstm | +0.031 [+0.011, +0.051] | -0.012 [-0.032, +0.008] |" in page
    assert "| lstm | 0.420 |" in page                               # its own feature
    assert "| gbm |" not in page                                    # count models: not a row
    (tmp_path / "gap/params.yaml").write_text(yaml.safe_dump(
        {"outcome": {"synthetic": {"scenario": "additive", "effects": ["x"]}}}))
    with pytest.raises(SystemExit, match="one scenario"):
        mech.main(["--runs", *map(str, runs), "--command", "x", "--out", str(out)])
