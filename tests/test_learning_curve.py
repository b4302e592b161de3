"""Label-efficiency curve: nested labelled subsets by patient, parameter errors, and the
scoring of curve points (intervals, paired deltas, crossover, recorded skips)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ehrseq.data.task import SurvivalTask, curve_point, stage_name, subset_problem
from ehrseq.evaluate.curve import crossover, learning_curve, split_outputs
from ehrseq.evaluate.scoring import find_predictions
from ehrseq.params import CurveParams, ParamsError


def task_of(n_patients=60, per=3, seed=0):
    rng = np.random.default_rng(seed)
    pid = np.repeat([f"p{i:03d}" for i in range(n_patients)], per)
    split = np.repeat(rng.choice(["train", "val", "test"], n_patients, p=[0.6, 0.2, 0.2]), per)
    m = len(pid)
    table = pd.DataFrame({"patient": pid, "index": np.repeat(np.arange(n_patients), per),
                          "split": split, "landmark_visits": np.tile(np.arange(2, 2 + per),
                                                                     n_patients),
                          "duration": rng.exponential(300, m) + 1,
                          "event": (rng.random(m) < 0.5).astype(int)})
    return SurvivalTask(None, table, np.array([0.0, 100.0]), [100.0], np.zeros(m),
                        np.zeros(m, bool))


def test_subsets_are_nested_by_patient_and_validation_shrinks():
    task = task_of()
    n_train = task.table.loc[task.rows("train"), "patient"].nunique()
    n_val = task.table.loc[task.rows("val"), "patient"].nunique()
    pats = {}
    for n in (5, 10, 20):
        sub = task.labelled_subset(n, replicate=0)
        t = sub.table
        tr = set(t.loc[t["split"] == "train", "patient"])
        assert len(tr) == n
        assert (t.groupby("patient").size() == 3).all()             # every landmark kept
        assert t[t["split"] == "val"]["patient"].nunique() == max(2, round(n * n_val / n_train))
        assert (t["split"] == "test").sum() == (task.table["split"] == "test").sum()
        assert len(sub.age) == len(t)
        pats[n] = tr
    assert pats[5] < pats[10] < pats[20]                             # nested
    other = set(task.labelled_subset(10, replicate=1).table.query("split == 'train'")["patient"])
    assert other != pats[10]                                         # another replicate
    with pytest.raises(ParamsError, match=f"curve.labelled: {n_train} is not smaller"):
        task.labelled_subset(n_train, 0)


def test_curve_params_and_cli():
    with pytest.raises(ValueError, match="at least one replicate"):
        CurveParams(replicates=[])
    with pytest.raises(ValueError, match="distinct labelled-patient counts"):
        CurveParams(labelled=[25, 25])
    with pytest.raises(ValueError, match="distinct modes"):
        CurveParams(behrt_modes=["full", "big"])
    assert CurveParams(labelled=[50, 25]).labelled == [25, 50]
    assert curve_point(["--labelled", "25", "--replicate", "3"]) == (25, 3)
    assert curve_point([]) == (None, 0)
    assert stage_name("baselines", None, 0) == "baselines"
    assert stage_name("finetune_behrt/full", 25, 3) == "curve/finetune_behrt/full/n25_r3"


def test_a_subset_without_events_is_a_recorded_problem():
    task = task_of()
    task.table["event"] = np.where(task.table["split"] == "val", 0, task.table["event"])
    assert "no event among the val landmarks" in subset_problem(task.labelled_subset(10, 0))


def test_crossover():
    assert crossover([10, 20, 40, 80], [False, True, True, True]) == 20
    assert crossover([10, 20, 40, 80], [True, False, True, True]) == 40
    assert crossover([10, 20, 40], [True, True, False]) == "none in range"


def test_curve_points_are_scored_paired_and_skips_recorded(tmp_path):
    rng = np.random.default_rng(1)
    n_pat, per = 120, 2
    n = n_pat * per
    risk = np.repeat(3.0 * rng.standard_normal(n_pat), per)
    duration = rng.exponential(300 * np.exp(-risk)) + 1
    split = np.repeat(np.where(np.arange(n_pat) < 60, "train", "test"), per)
    table = pd.DataFrame({"patient": np.repeat([f"p{i}" for i in range(n_pat)], per),
                          "index": np.repeat(np.arange(n_pat), per),
                          "landmark_visits": np.tile([2, 3], n_pat), "split": split,
                          "duration": duration, "event": np.ones(n, int)})
    out = tmp_path / "outcomes"
    out.mkdir()
    table.to_parquet(out / "outcomes.parquet")
    te = table[table["split"] == "test"]
    times = np.array([30.0, 100.0, 300.0, 3000.0])
    root = tmp_path / "predictions"

    def write(d, name, noise, info=None):
        d.mkdir(parents=True, exist_ok=True)
        score = risk[split == "test"] + noise * rng.standard_normal(len(te))
        np.savez(d / f"{name}.npz", index=te["index"].to_numpy(),
                 landmark_visits=te["landmark_visits"].to_numpy(), times=times,
                 surv=np.exp(-np.outer(np.exp(score), times) / 1000.0))
        (d / f"{name}.json").write_text(json.dumps({"train_seconds": 1.0, **(info or {})}))

    # main run: cox is the best count model; BEHRT better than it
    write(root / "baselines", "cox", 3.0, {"best_count": True})
    gpu = {"device_type": "cuda", "world_size": 1, "n_params_trainable": 1000}
    write(root / "finetune_behrt/full", "behrt_full", 0.2, gpu)
    # the curve: BEHRT worse at 10, better at 30; cox flat
    for n, noise_b in ((10, 12.0), (30, 0.1)):
        write(root / f"curve/baselines/n{n}_r0", "cox", 3.0, {"best_count": True})
        write(root / f"curve/finetune_behrt/full/n{n}_r0", "behrt_full", noise_b, gpu)
    skipped = root / "curve/train_survival/n10_r0"
    skipped.mkdir(parents=True)
    (skipped / "SKIPPED.txt").write_text("no event among the val landmarks\n")
    outputs = [root / "baselines", root / "finetune_behrt/full",
               root / "curve/baselines/n10_r0", root / "curve/baselines/n30_r0",
               root / "curve/finetune_behrt/full/n10_r0", root / "curve/finetune_behrt/full/n30_r0",
               skipped]
    main, curve = split_outputs(outputs, root)
    assert main == outputs[:2] and len(curve) == 5
    plots = tmp_path / "plots"
    plots.mkdir()
    main_files, _ = find_predictions(root, main, ignore=curve)
    pretrain = {"behrt": {"train_seconds": 50.0, "device_type": "cuda", "world_size": 1}}
    m, md = learning_curve(curve, main_files, root, out, [100.0], 200, 0, plots, pretrain, 3.6)
    assert m["curve.n_all"] == 60
    for fam in ("cox", "best_count", "behrt_full"):
        for n in (10, 30, 60):
            k = f"curve.{fam}.n{n}"
            assert m[f"{k}.c_harrell_lo"] <= m[f"{k}.c_harrell"] <= m[f"{k}.c_harrell_hi"]
            assert m[f"{k}.replicates"] == 1
    d10, d30 = (m[f"curve.delta.behrt_full-best_count.n{n}.delta"] for n in (10, 30))
    assert d10 < 0 < d30 and m["curve.delta.behrt_full-best_count.n30.lo"] > 0
    assert m["curve.crossover.behrt_full-best_count"] == 30
    assert m["curve.crossover_significant.behrt_full-best_count"] == 30
    assert m["curve.skipped.train_survival/n10_r0"].startswith("no event")
    assert "- `train_survival/n10_r0`: no event among the val landmarks" in md   # in the report
    assert "behrt_full-best_count" in md and (plots / "learning_curve.png").is_file()
    csv = pd.read_csv(plots / "learning_curve.csv")
    assert set(csv["labelled"]) == {10, 30, 60} and set(csv["family"]) >= {"cox", "behrt_full"}
    # cost: the pre-trained family pays its pre-training at every n, in USD on CUDA
    for n in (10, 30, 60):
        k = f"curve.behrt_full.n{n}"
        assert m[f"{k}.pretrain_seconds"] == 50.0 and m[f"{k}.total_seconds"] == 51.0
        assert m[f"{k}.gpu_cost_usd"] == pytest.approx(51.0 * 3.6 / 3600)
        assert m[f"{k}.n_params_trainable"] == 1000 and m[f"{k}.device_type"] == "cuda"
        assert m[f"curve.cox.n{n}.pretrain_seconds"] == 0.0
        assert m[f"curve.cox.n{n}.gpu_cost_usd"] == 0.0
    assert (plots / "learning_curve_cost.png").stat().st_size > 1000
    assert "| behrt_full | 10 | " in md and "USD at $3.6/GPU-h" in md


def test_estimate_covers_every_family_and_projects_a_grid(tmp_path, monkeypatch, capsys):
    """python -m ehrseq.ops.estimate: real training steps of every family on a toy cohort, and
    a grid projected on a named GPU by the stated FLOP model."""
    import shutil

    from conftest import ROOT

    from ehrseq.ops.estimate import GPUS, MODELS, main, project

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    main(["--model", "all", "--patients", "60", "--steps", "1", "--batch-size", "8",
          "--gpu", "h100", "--runs", "4", "--epochs", "3"])
    out = capsys.readouterr().out
    assert out.count("FLOP model") == len(MODELS) == 4
    for name in MODELS:
        assert f"model                          {name}" in out
    p = project(1_000_000, 1e6, 10, 2, "a100", 2.0)
    assert p["projected_seconds"] == pytest.approx(6 * 1e6 * 1e6 * 20 / (GPUS["a100"] * 1e12
                                                                         * 0.30), rel=1e-2)


def test_estimate_projects_a_corpus_on_named_pods(tmp_path, monkeypatch, capsys):
    """`--corpus N`: the generator's rate measured here (one patient), pre-training steps on a
    toy cohort, projected onto the named pods and a GPU; time is linear in N and inverse in
    the cores."""
    import shutil

    from conftest import ROOT

    from ehrseq.ops.estimate import PODS, main, project_corpus

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    main(["--corpus", "100000", "1000000", "--generate", "1", "--patients", "60", "--steps",
          "1", "--batch-size", "8", "--gpu", "h100", "--epochs", "2"])
    out = capsys.readouterr().out
    assert out.count("corpus_patients") == 2 and out.count("pretrain_projected_usd") == 2
    for pod in PODS:
        assert f"generation_hours_{pod}" in out
    pre = {"batch_size": 8, "seconds_per_step": 0.5, "tokens_per_batch": 800, "params": 10**6}
    a, b = (project_corpus(n, 2.0, pre, 3, "a100", 2.0) for n in (1000, 10_000))
    assert b["generation_hours_1x16"] == pytest.approx(10 * a["generation_hours_1x16"], rel=1e-2)
    assert a["generation_hours_1x16"] == pytest.approx(1000 / (2.0 * 16) / 3600, rel=1e-2)
    assert a["generation_hours_4x16"] == pytest.approx(a["generation_hours_1x16"] / 4, rel=1e-2)
    assert a["pretrain_seconds_here"] == pytest.approx(0.5 * 1000 / 8 * 3, rel=1e-2)
    with pytest.raises(SystemExit, match="--corpus"):
        main(["--corpus", "0"])
