"""Representation probes: a representation that carries a feature reads it, one that does not
reads nothing, constant features get no score; fitted on validation, scored on test."""

import numpy as np
import pandas as pd

from ehrseq.evaluate.probes import load_representations, probe_scores, probes_markdown


def test_probes_read_what_a_representation_carries(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    split = np.array(["train", "val", "test"])[rng.integers(0, 3, n)]
    flag = (rng.random(n) < 0.3).astype(float)
    level = rng.normal(size=n)
    feats = pd.DataFrame({"flag": flag, "level": level, "never": np.zeros(n)})
    noise = rng.normal(size=(n, 8))
    carries = np.column_stack([flag + 0.3 * rng.normal(size=n), level, noise[:, :3]])
    for name, x in (("carries", carries), ("noise", noise)):
        np.savez_compressed(tmp_path / f"{name}.npz", X=x, split=split)
    reps = load_representations(tmp_path)
    assert list(reps) == ["carries", "noise"]
    rows = probe_scores(feats, split, reps)
    got = {(r["representation"], r["feature"]): r for r in rows}
    assert got["carries", "flag"]["kind"] == "auroc" and got["carries", "flag"]["score"] > 0.9
    assert got["carries", "level"]["kind"] == "r2" and got["carries", "level"]["score"] > 0.95
    assert abs(got["noise", "flag"]["score"] - 0.5) < 0.1
    assert got["noise", "level"]["score"] < 0.05
    assert got["carries", "never"]["score"] is None
    assert got["carries", "flag"]["n_val"] == int((split == "val").sum())
    # the training rows never reach the probe: scrambling them changes nothing
    scrambled = {k: v.copy() for k, v in reps.items()}
    for v in scrambled.values():
        v[split == "train"] = rng.normal(size=v[split == "train"].shape) * 100
    again = probe_scores(feats, split, scrambled)
    assert [r["score"] for r in again] == [r["score"] for r in rows]
    md = probes_markdown(rows)
    assert "| carries |" in md and "flag (AUROC)" in md and "level (R²)" in md and "n/a" in md
