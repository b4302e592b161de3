"""docs/tools/landmark_count.py: the landmark-count page (issue 26 part 7) from runs' outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import script

from ehrseq.params import ParamsError

M = 80          # test patients


def fake_run(root, per_patient, noise, seed=0, outcome_seed=1):
    """A finished run of ``per_patient`` landmarks per test patient: the first landmark of
    each (landmark_visits 2) is the same in every run, with the same outcome (another
    ``outcome_seed``: a run of another cohort); each further one is a later visit. Two models,
    gbm (a count model) and lstm, whose test predictions are the true risk plus ``noise``."""
    risk = np.random.default_rng(0).normal(size=(per_patient, M)).T
    dur = np.random.default_rng(outcome_seed).exponential(200, (per_patient, M)).T
    dur = (dur * np.exp(-risk)).round() + 1
    event = (np.random.default_rng(2).random((per_patient, M)).T < 0.6).astype(int)
    index = np.repeat(np.arange(M), per_patient)
    visits = np.tile(2 + np.arange(per_patient), M)
    test = pd.DataFrame({"patient": [f"p{i}" for i in index], "index": index,
                         "landmark_visits": visits, "split": "test", "duration": dur.ravel(),
                         "event": event.ravel(), "true_risk": risk.ravel()})
    train = pd.DataFrame({"patient": [f"t{i}" for i in range(30)], "index": M + np.arange(30),
                          "landmark_visits": 2, "split": "train", "duration": dur[:30, 0],
                          "event": 1, "true_risk": 0.0})
    out = root / "data/processed/outcomes"
    out.mkdir(parents=True)
    pd.concat([test, train]).to_parquet(out / "outcomes.parquet")
    (out / "time_bins.json").write_text(json.dumps({"cuts": [0.0, 100.0], "horizons": [100.0]}))
    ev = {"headroom": 0.1, "headroom_lo": 0.05, "headroom_hi": 0.15, "oracle.c_harrell": 0.7,
          "best_count.model": "gbm"}
    grid = np.unique(dur)
    rng = np.random.default_rng(seed)
    for model, stage in (("gbm", "baselines"), ("lstm", "train_survival")):
        ev.update({f"{model}.stage": stage, f"{model}.c_harrell": 0.6,
                   f"{model}.train_seconds": 12.0, f"{model}.best_val_loss": 1.0})
        r = risk.ravel() + noise[model] * rng.normal(size=risk.size)
        p = root / "data/predictions" / stage
        p.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(p / f"{model}.npz", index=index, landmark_visits=visits, times=grid,
                            surv=np.exp(-np.outer(np.exp(r), grid) / 200))
    ev.update({f"delta.lstm-best_count.{s}": v for s, v in (("delta", -0.02), ("lo", -0.05),
                                                             ("hi", 0.01))})
    (root / "metrics").mkdir()
    (root / "metrics/evaluate.json").write_text(json.dumps(ev))
    return root


def test_page_scores_every_run_on_the_first_runs_landmarks(tmp_path):
    tool = script("docs/tools/landmark_count.py")
    few = fake_run(tmp_path / "few", 1, {"gbm": 0.2, "lstm": 3.0})
    many = fake_run(tmp_path / "many", 4, {"gbm": 0.2, "lstm": 0.1}, seed=7)
    out = tmp_path / "page.md"
    tool.main(["--runs", str(few), str(many), "--title", "T", "--command", "by hand",
               "--out", str(out)])
    page = out.read_text()
    assert f"| `{few}` | 1.00 | 110 | 30 | 80 (" in page
    assert f"| `{many}` | 3.18 | 350 | 30 | 320 (" in page
    assert "lstm: -0.020 [-0.050, +0.010]" in page       # the best sequence model, read
    assert "The first run's 80 test landmarks" in page
    assert "0 events differ, durations' rank correlation 1.00000" in page
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in page.splitlines()
            if line.startswith(("| gbm | count", "| lstm | sequence"))}
    # the many-landmark run's lstm is the less noisy one: paired above the first run's
    d_lstm = float(rows["lstm"][-1].split(" [")[0])
    assert d_lstm > 0.05
    # its gbm has the same noise (other draws): no large difference
    assert abs(float(rows["gbm"][-1].split(" [")[0])) < 0.05


def test_page_refuses_runs_of_other_landmarks_or_outcomes(tmp_path):
    tool = script("docs/tools/landmark_count.py")
    base = fake_run(tmp_path / "a", 2, {"gbm": 1.0, "lstm": 1.0})
    fewer = fake_run(tmp_path / "b", 1, {"gbm": 1.0, "lstm": 1.0})
    moved = fake_run(tmp_path / "c", 2, {"gbm": 1.0, "lstm": 1.0}, outcome_seed=9)
    out = str(tmp_path / "page.md")
    with pytest.raises(SystemExit, match="80 of .* test landmarks are not among its own"):
        tool.main(["--runs", str(base), str(fewer), "--title", "T", "--command", "x",
                   "--out", out])
    with pytest.raises(SystemExit, match="outcomes of the shared test landmarks differ"):
        tool.main(["--runs", str(base), str(moved), "--title", "T", "--command", "x",
                   "--out", out])


def test_page_names_runs_by_the_varied_parameter(tmp_path):
    """--vary model.size: runs of one landmark count named by their size; the same test
    landmarks, so nothing differs in the outcomes."""
    tool = script("docs/tools/landmark_count.py")
    tiny = fake_run(tmp_path / "tiny", 2, {"gbm": 0.2, "lstm": 2.0})
    small = fake_run(tmp_path / "small", 2, {"gbm": 0.2, "lstm": 0.1}, seed=3)
    for run, size in ((tiny, "tiny"), (small, "small")):
        (run / "params.yaml").write_text(f"model:\n  size: {size}\n")
    out = tmp_path / "page.md"
    tool.main(["--runs", str(tiny), str(small), "--vary", "model.size", "--title", "T",
               "--command", "x", "--out", str(out)])
    page = out.read_text()
    assert "| run | `model.size` | landmarks per patient |" in page
    assert f"| `{tiny}` | tiny | 1.73 | 190 |" in page
    assert f"| `{small}` | small | 1.73 | 190 |" in page
    assert "C [95% CI], tiny | C [95% CI], small | ΔC, small − tiny" in page
    assert "0 events differ, durations' rank correlation 1.00000" in page
    lstm = next(line for line in page.splitlines() if line.startswith("| lstm | sequence"))
    assert float(lstm.split(" | ")[-1].split(" [")[0]) > 0.05
    (small / "params.yaml").write_text("model:\n  sise: small\n")
    with pytest.raises(ParamsError, match="model.sise: unknown key"):
        tool.main(["--runs", str(tiny), str(small), "--vary", "model.size", "--title", "T",
                   "--command", "x", "--out", str(out)])
