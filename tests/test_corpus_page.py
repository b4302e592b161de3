"""docs/tools/corpus_curve.py: the corpus-size page (issue 29 part 3) from runs' outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import script


def fake_run(root, corpus, noise, seed=0, n_patients=60):
    """A finished run's files the page reads: outcomes, pre-training and learning-curve
    metrics, and pre-trained BEHRT's test predictions (all labels and 25 labelled)."""
    rng = np.random.default_rng(seed)
    m = n_patients
    risk = np.random.default_rng(0).normal(size=m)            # the same test patients
    d = (np.random.default_rng(1).exponential(200, m) * np.exp(-risk)).round() + 1
    out = root / "data/processed/outcomes"
    out.mkdir(parents=True)
    train = pd.DataFrame({"patient": [f"t{i}" for i in range(30)], "index": m + np.arange(30),
                          "landmark_visits": 2, "split": "train", "duration": d[:30],
                          "event": 1})
    pd.concat([pd.DataFrame({"patient": [f"p{i}" for i in range(m)], "index": np.arange(m),
                             "landmark_visits": 2, "split": "test", "duration": d,
                             "event": (np.random.default_rng(2).random(m) < 0.6).astype(int)}),
               train]).to_parquet(out / "outcomes.parquet")
    (out / "time_bins.json").write_text(json.dumps({"cuts": [0.0, 100.0], "horizons": [100.0]}))
    (root / "metrics").mkdir()
    (root / "metrics/pretrain_behrt.json").write_text(json.dumps(
        {"behrt.corpus_patients": corpus, "behrt.train_patients": 40 + corpus,
         "behrt.train_seconds": 10.0 + corpus}))
    curve, ev = {}, {}     # 25 labelled: a curve point; 30 (every training patient): main
    grid = np.unique(d)
    for n, path, out_m, pre in ((25, "curve/finetune_behrt/full/n25_r0", curve, "curve."),
                                (30, "finetune_behrt/full", ev, "")):
        k = f"{pre}behrt_full.n{n}." if pre else "behrt_full."
        out_m.update({k + "c_harrell": 0.6, k + "c_harrell_lo": 0.5, k + "c_harrell_hi": 0.7})
        for b in ("best_count", "behrt_scratch"):
            key = f"curve.delta.behrt_full-{b}.n{n}." if pre else f"delta.behrt_full-{b}."
            out_m.update({key + s: v for s, v in (("delta", 0.01), ("lo", -0.02), ("hi", 0.04))})
        p = root / "data/predictions" / path
        p.mkdir(parents=True)
        r = risk + noise * rng.normal(size=m)
        np.savez_compressed(p / "behrt_full.npz", index=np.arange(m),
                            landmark_visits=np.full(m, 2), times=grid,
                            surv=np.exp(-np.outer(np.exp(r), grid) / 200))
    (root / "metrics/learning_curve.json").write_text(json.dumps(curve))
    (root / "metrics/evaluate.json").write_text(json.dumps(ev))
    return root


def test_page_pairs_each_corpus_with_the_first_run(tmp_path):
    tool = script("docs/tools/corpus_curve.py")
    runs = [fake_run(tmp_path / "none", 0, noise=3.0),
            fake_run(tmp_path / "big", 160, noise=0.1, seed=5)]
    out = tmp_path / "page.md"
    tool.main(["--runs", *map(str, runs), "--title", "T", "--command", "by hand",
               "--out", str(out)])
    page = out.read_text()
    assert "| 160 | 200 | 5.0 | 170 |" in page                       # corpus, read, x, s
    rows = [line for line in page.splitlines() if line.startswith("| 160 | ")]
    assert [r.split(" | ")[1] for r in rows] == ["25", "30"]        # every labelled count
    # the bigger corpus's model here is the less noisy one: paired above the first run's
    d = float(rows[-1].split(" | ")[-1].split(" [")[0])
    assert d > 0.05
    assert "| 0 | 30 | 0.600 [0.500, 0.700] | +0.010 [-0.020, +0.040] |" in page
    # runs of other test patients are refused
    other = fake_run(tmp_path / "other", 10, noise=1.0, n_patients=50)
    with pytest.raises(SystemExit, match="test landmarks differ"):
        tool.main(["--runs", str(runs[0]), str(other), "--title", "T", "--command", "x",
                   "--out", str(out)])


def test_page_names_runs_by_the_parameter_they_vary(tmp_path):
    tool = script("docs/tools/corpus_curve.py")
    runs = [fake_run(tmp_path / "mlm", 0, noise=3.0), fake_run(tmp_path / "tte", 0, noise=0.1)]
    for run, objective in zip(runs, ("mlm", "tte"), strict=True):
        (run / "params.yaml").write_text(f"pretrain:\n  objective: {objective}\n")
    out = tmp_path / "page.md"
    tool.main(["--vary", "pretrain.objective", "--runs", *map(str, runs), "--title", "T",
               "--command", "by hand", "--out", str(out)])
    page = out.read_text()
    assert f"| `{runs[1]}` | tte | 0 | 40 | 1.0 | 10 |" in page
    rows = [line for line in page.splitlines() if line.startswith("| tte | ")]
    assert [r.split(" | ")[1] for r in rows] == ["25", "30"]
    assert float(rows[-1].split(" | ")[-1].split(" [")[0]) > 0.05   # paired with mlm's
    with pytest.raises(SystemExit, match="no parameter 'pretrain.objektive'"):
        tool.main(["--vary", "pretrain.objektive", "--runs", *map(str, runs), "--title", "T",
                   "--command", "x", "--out", str(out)])
