"""docs/tools/subgroup_c.py: where a change moved test C, per subgroup of test landmarks."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "tools"))
import subgroup_c  # noqa: E402

from ehrseq.data.tensors import Sequences  # noqa: E402


def _run(root: Path, risk_late: float, seed: int = 0) -> Path:
    """A run holding 40 test patients x 4 landmarks; the prediction ranks every landmark by its
    true duration except the later landmarks, where ``risk_late`` mixes in noise."""
    rng = np.random.default_rng(seed)
    pts = np.repeat(np.arange(40), 4)
    order = np.tile(np.arange(4), 40)
    t_rng = np.random.default_rng(7)           # the same outcomes in every run
    dur = t_rng.uniform(10, 1000, pts.size)
    ev = (t_rng.random(pts.size) < 0.4).astype(int)
    test = pd.DataFrame({"patient": pts.astype(str), "index": pts, "split": "test",
                         "landmark_time": order * 100.0, "landmark_visits": order + 2,
                         "input_visits": np.where(order >= 2, 3, order + 2), "duration": dur,
                         "event": ev, "subtype": 0, "true_risk": np.nan})
    train = test.assign(split="train", index=test["index"] + 100)
    out = root / "data/processed/outcomes"
    out.mkdir(parents=True)
    pd.concat([train, test]).to_parquet(out / "outcomes.parquet")
    score = -dur + np.where(order >= 2, risk_late * rng.normal(0, 1000, pts.size), 0)
    times = np.array([100.0, 500.0, 1000.0])
    surv = np.exp(-np.outer(np.exp(score / 300.0), times / 1000.0))
    pred = root / "data/predictions/m"
    pred.mkdir(parents=True)
    np.savez(pred / "model.npz", index=pts, landmark_visits=order + 2, times=times, surv=surv)
    (root / "metrics").mkdir()
    (root / "metrics/evaluate.json").write_text(json.dumps({"test.risk_horizon": 500.0}))
    (root / "params.yaml").write_text("report:\n  bootstrap: 50\n  seed: 0\n")
    return root


def test_a_change_that_hurts_later_landmarks_shows_there(tmp_path):
    before, after = _run(tmp_path / "b", 0.0), _run(tmp_path / "a", 3.0)
    out = tmp_path / "page.md"
    subgroup_c.main([str(before), str(after), "--model", "m/model", "--reference", "m/model",
                     "--title", "t", "--out", str(out)])
    rows = {r["subgroup"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    assert rows["every test landmark"]["landmarks"] == 160
    early = rows["first half of each patient's landmarks"]["m/model"]["difference"]
    late = rows["second half (later landmarks)"]["m/model"]["difference"]
    assert early["delta"] == pytest.approx(0.0, abs=1e-12)
    assert late["delta"] < -0.1 and late["hi"] < 0
    # windows cut by the history (input < landmark visits) are the later landmarks here
    cut = rows["window cut by outcome.history"]
    assert cut["landmarks"] == 80 and cut["m/model"]["difference"]["delta"] < -0.1
    assert "| second half (later landmarks) | 80 |" in out.read_text()


def test_runs_of_different_outcomes_are_refused(tmp_path):
    before, after = _run(tmp_path / "b", 0.0), _run(tmp_path / "a", 0.0)
    o = pd.read_parquet(before / "data/processed/outcomes/outcomes.parquet")
    o.loc[o["split"] == "test", "event"] = 1 - o.loc[o["split"] == "test", "event"]
    o.to_parquet(before / "data/processed/outcomes/outcomes.parquet")
    with pytest.raises(SystemExit, match="differ"):
        subgroup_c.main([str(before), str(after), "--model", "m/model", "--title", "t",
                         "--out", str(tmp_path / "x.md")])


def test_subgroups_by_a_code_in_the_window(tmp_path):
    """Each of 40 patients has 5 visits of 2 tokens; a binned lab sits in the first visit only,
    so the windows that start there (the first two landmarks: whole history) hold it and the
    cut windows of the later two do not."""
    before, after = _run(tmp_path / "b", 0.0), _run(tmp_path / "a", 3.0)
    codes = np.tile([1, 1], 200)
    codes[::10] = 2                                     # visit 0 of each patient: LOINC/1:q0
    Sequences(codes=codes, visit_offsets=np.arange(0, 401, 2), patient_offsets=np.arange(0, 201, 5),
              visit_time=np.zeros(200), visit_age=np.zeros(200, np.float32),
              patients=pd.DataFrame({"patient": [str(i) for i in range(40)]}),
              vocab={"tokens": ["[PAD]", "X", "LOINC/1:q0", "LOINC/1:q1"]}
              ).save(after / "data/processed/sequences")
    test = subgroup_c._test(after)
    held = subgroup_c.code_in_window(after, test, "LOINC/1")
    order = test["landmark_visits"].to_numpy() - 2
    assert (held == np.where(order < 2, 1, 0)).all()
    out = tmp_path / "page.md"
    subgroup_c.main([str(before), str(after), "--model", "m/model", "--code", "LOINC/1",
                     "--title", "t", "--out", str(out)])
    rows = {r["subgroup"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    assert rows["window holds LOINC/1"]["landmarks"] == 80
    assert rows["window holds no LOINC/1"]["m/model"]["difference"]["delta"] < -0.1
    with pytest.raises(SystemExit, match="not in"):
        subgroup_c.code_in_window(after, test, "LOINC/2")
