"""docs/tools/finetuned_probes.py on the tiny pipeline's run: the vector it probes is the one the
fine-tuned BEHRT's hazard head reads, and the page has a row per fine-tuned model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import script

from ehrseq.data.task import SurvivalTask
from ehrseq.models.behrt import BEHRTDataset
from ehrseq.models.store import load_model


def test_probed_vector_is_the_head_input(tiny_pipeline, tmp_path, one_thread):
    tool = script("docs/tools/finetuned_probes.py")
    run = tiny_pipeline
    task = SurvivalTask.load(run / "data/processed/sequences", run / "data/processed/outcomes")
    x, how = tool.finetuned_behrt(run, "full", task)
    assert how == "cls"
    assert x.shape[0] == len(task.table) and np.isfinite(x).all()
    model, _, _ = load_model(run / "models/finetune_behrt/full")
    model.eval()
    ds = BEHRTDataset(tool._landmark_dataset(task), model.config.max_len)
    batch = ds[np.arange(8)]
    with torch.no_grad():
        want = model(batch)
        got = model.head(torch.from_numpy(x[batch.rows.numpy()]).float())
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    out = tmp_path / "page.md"
    tool.main(["--run", str(run), "--label", "tiny", "--title", "T", "--out", str(out)])
    page = out.read_text()
    assert "| tiny: behrt_full (cls) |" in page and "| tiny: behrt_scratch (cls) |" in page
    assert "| tiny: lstm |" in page and "| tiny: behrt_cls |" not in page   # pre-trained: left out
    assert out.with_suffix(".json").is_file()
    assert "| tiny: oracle / best count (" in page   # the true log-hazard probes' table
    risk = [x for x in page.splitlines() if x.startswith("| tiny: behrt_full (cls) | ")]
    assert len(risk) == 2 and risk[1].count("[") == 2   # a probe row per table: two probes
    with pytest.raises(SystemExit, match="features.parquet: missing"):
        tool.main(["--run", str(tmp_path), "--label", "none", "--title", "T", "--out", str(out)])


def test_true_risk_probe_reaches_the_oracle_from_the_risk_itself():
    import pandas as pd

    from ehrseq.evaluate.survival import harrell_c_interval

    tool = script("docs/tools/finetuned_probes.py")
    rng = np.random.default_rng(0)
    n = 2000
    risk = rng.normal(size=n)
    t = pd.DataFrame({"index": np.arange(n) // 4, "split": np.where(np.arange(n) < n // 2,
                                                                    "val", "test"),
                      "true_risk": risk, "duration": rng.exponential(np.exp(-risk)),
                      "event": (rng.random(n) < 0.7).astype(int)})
    noise = rng.normal(size=(n, 4))
    rows = {r["representation"]: r for r in tool.risk_rows(
        t, {"oracle": np.c_[risk, noise], "noise": noise})}
    test = (t["split"] == "test").to_numpy()
    want = harrell_c_interval(t["duration"].to_numpy(float)[test], t["event"].to_numpy(int)[test],
                              risk[test], 200, 0, t["index"].to_numpy()[test])["c_harrell"]
    for key in ("score", "nonlinear_score"):   # the linear probe and the trees
        assert rows["oracle"][key] == pytest.approx(want, abs=0.01)
        assert abs(rows["noise"][key] - 0.5) < 0.05 < want - 0.5
