"""docs/tools/before_after.py: the probes of two runs side by side."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "tools"))
from before_after import probes_table  # noqa: E402


def test_probes_before_and_after_per_representation_and_feature():
    before = {"probe.lstm.sbp_trend": 0.0001, "probe.lstm.short_gap": 0.2,
              "probe.tfidf_svd.sbp_trend": 0.001, "probe.tfidf_svd.short_gap": None}
    after = {"probe.lstm.sbp_trend": 0.31, "probe.lstm.short_gap": 0.25,
             "probe.tfidf_svd.sbp_trend": 0.001, "probe.tfidf_svd.short_gap": 0.1}
    lines = probes_table(before, after)
    assert "| representation | sbp_trend | short_gap |" in lines
    assert "| lstm | 0.000 → 0.310 | 0.200 → 0.250 |" in lines
    assert "| tfidf_svd | 0.001 → 0.001 | n/a |" in lines
    assert probes_table({}, after) == [] and probes_table(before, {"c": 1}) == []
