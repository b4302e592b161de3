"""MOTOR-style time-to-event pre-training (issue 26 part 5): targets against a loop over the
records, the piecewise-exponential likelihood by hand, biases at the log event rates, a model
that learns what the marginal rates cannot, and the stage end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import script
from test_behrt import TINY, typed_cohort

from ehrseq.data.tensors import toy_sequences
from ehrseq.models.behrt import BEHRTConfig
from ehrseq.models.pretraining import (
    MIN_TTE_DAYS,
    BEHRTPretrain,
    PretrainDataset,
    code_log_freq,
    evaluate_pretraining,
    init_tte_rates,
    pretrain_loader,
    pretrain_loss,
    tte_edges,
    tte_loss,
    tte_targets,
    tte_task_codes,
)
from ehrseq.params import TrainParams
from ehrseq.train.loop import fit
from ehrseq.train.runtime import seed_everything

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_targets_match_a_loop_over_the_records():
    s = toy_sequences(40, vocab_size=20, max_visits=8, max_codes=4, seed=3)
    rng = np.random.default_rng(0)
    last = s.visit_time[s.patient_offsets[1:] - 1]
    s.patients["end_of_record"] = np.where(rng.random(40) < 0.5, last + 100.0, np.nan)
    tasks = tte_task_codes(s, np.arange(40), 6)
    counts = np.bincount(s.codes, minlength=20)
    assert list(counts[tasks]) == sorted(counts[5:], reverse=True)[:6] and tasks.min() >= 5
    lut = np.full(20, -1)
    lut[tasks] = np.arange(6)
    p = np.arange(40)
    cut = np.maximum(1, np.floor(rng.uniform(0, 1, 40) * s.n_visits).astype(int))
    time, event = tte_targets(s, p, cut, lut, 6)
    for i in p:   # the loop: each task's first occurrence after the cut visit
        first = s.patient_offsets[i]
        t0 = s.visit_time[first + cut[i] - 1]
        end = max(last[i], s.patients["end_of_record"][i]) if np.isfinite(
            s.patients["end_of_record"][i]) else last[i]
        for j, code in enumerate(tasks):
            hit = [s.visit_time[v] - t0 for v in range(first + cut[i], s.patient_offsets[i + 1])
                   if code in s.codes[s.visit_offsets[v]:s.visit_offsets[v + 1]]]
            want = max(hit[0] if hit else end - t0, MIN_TTE_DAYS) / 365.25
            assert bool(event[i, j]) == bool(hit)
            assert time[i, j].item() == pytest.approx(want, rel=1e-5)
    assert event.any() and (~event).any()


def test_loss_is_the_piecewise_exponential_likelihood():
    edges = tte_edges([365.25])                     # pieces [0, 1) and [1, inf) years
    a, b = 0.3, -0.7
    lh = torch.tensor([[[a], [b]]] * 3)             # [3 patients, 2 pieces, 1 task]
    time = torch.tensor([[1.5], [1.5], [0.25]])
    event = torch.tensor([[True], [False], [True]])
    got = tte_loss(lh, time, event, edges, "sum")
    want = (np.exp(a) * 1 + np.exp(b) * 0.5 - b) + (np.exp(a) + np.exp(b) * 0.5) \
        + (np.exp(a) * 0.25 - a)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_time_to_event_learns_what_the_marginal_rates_cannot():
    """Typed patients: a task code recurs only in its own type's records, so the rates alone
    (the head at initialisation) cannot tell who will see it; after pre-training with the
    time-to-event objective alone the validation NLL is well below theirs."""
    s = typed_cohort(500)
    tr, va = np.arange(400), np.arange(400, 500)
    tasks = tte_task_codes(s, tr, 12)
    edges = tte_edges([30, 90, 365])
    cfg = BEHRTConfig(vocab_size=s.vocab_size, model_class="ehrseq.models.pretraining.BEHRTPretrain",
                      tte_tasks=len(tasks), tte_pieces=len(edges) - 1, **{**TINY, "max_len": 32})
    seed_everything(0)
    model = BEHRTPretrain(cfg)
    train = PretrainDataset(s, tr, 32, mask_prob=0.0, tte_tasks=tasks)
    init_tte_rates(model.tte, train, edges)
    lo, hi = edges[:-1], edges[1:]
    exp, ev = torch.zeros(len(lo), len(tasks)), torch.zeros(len(lo), len(tasks))
    for start in range(0, 400, 32):   # the biases are the log rates of these very targets
        b = train[(0, np.arange(start, min(start + 32, 400)))]
        for piece in range(len(lo)):
            exp[piece] += (b.tte_time - lo[piece]).clamp(min=0).minimum(hi[piece] - lo[piece]).sum(0)
            ev[piece] += (b.tte_event & (b.tte_time >= lo[piece]) & (b.tte_time < hi[piece])).sum(0)
    overall = (ev.sum(0) + 0.5) / exp.sum(0)
    torch.testing.assert_close(model.tte.bias, torch.log((ev + 0.5) / (exp + 0.5 / overall)))
    assert (exp[-1] == 0).all()   # nobody reaches the last piece: it gets the overall rate
    torch.testing.assert_close(model.tte.bias[-1], torch.log(overall))
    val = pretrain_loader(PretrainDataset(s, va, 32, mask_prob=0.0, seed=1, last_visit=True,
                                          tte_tasks=tasks), 100)
    w = {"mlm_weight": 0.0, "next_visit_weight": 0.0, "tte_weight": 1.0, "edges": edges}
    lf, cpu = code_log_freq(s, tr), torch.device("cpu")
    before = evaluate_pretraining(model, val, lf, cpu, **w)
    assert before["tte_nll"] == pytest.approx(before["tte_nll_rate"])   # the rates exactly
    fit(model, pretrain_loader(train, 32, shuffle=True), lambda m, x: pretrain_loss(m, x, **w),
        TrainParams(epochs=6, lr=3e-3, warmup_frac=0.05, patience=6),
        val_fn=lambda m, d: {"val_loss": evaluate_pretraining(m, val, lf, d, **w)["loss"]},
        monitor="val_loss", checkpoint=False, progress=False)
    after = evaluate_pretraining(model, val, lf, cpu, **w)
    assert after["tte_nll"] < after["tte_nll_rate"] - 0.1, after
    assert after["loss"] == pytest.approx(after["tte_nll"])


@pytest.mark.parametrize("objective", ["tte", "mlm+tte"])
def test_stage_pretrains_with_the_objective_and_finetuning_reads_it(objective, tmp_path,
                                                                      monkeypatch):
    from test_tune import toy_workspace

    toy_workspace(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["pretrain"] = {"objective": objective, "tte_codes": 8, "tte_pieces": [30, 365]}
    params["model"]["behrt"] = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32,
                                "max_len": 64}
    params["tune"]["finetune_lrs"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)

    def stage(name):
        return script(f"stages/{name}.py")

    stage("pretrain_behrt").main()
    m = json.loads((tmp_path / "metrics/pretrain_behrt.json").read_text())
    assert m["tte_tasks"] == 8 and m["val.tte_nll_rate"] > 0 and m["behrt.objective"] == objective
    assert ("val.mlm_accuracy" in m) == (objective == "mlm+tte")
    cfg = json.loads((tmp_path / "models/pretrain_behrt/config.json").read_text())
    assert (cfg["tte_tasks"], cfg["tte_pieces"]) == (8, 3)
    stage("finetune_behrt").main("full")
    assert (tmp_path / "models/finetune_behrt/full").exists()


def test_auto_objective_follows_the_number_of_pretraining_patients(tmp_path, monkeypatch):
    """``auto``: tte below ``mlm_from_patients`` pre-training patients, mlm from there on; the
    stage's metrics name the objective it used."""
    from test_tune import toy_workspace

    from ehrseq.params import PretrainParams

    pp = PretrainParams()
    assert pp.objective == "auto"
    assert [pp.resolved_objective(n) for n in (150, 999, 1000, 5000)] == \
        ["tte", "tte", "mlm", "mlm"]
    assert PretrainParams(objective="tte").resolved_objective(10_000) == "tte"
    toy_workspace(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["pretrain"] = {"objective": "auto", "mlm_from_patients": 2, "tte_codes": 8}
    params["model"]["behrt"] = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32,
                                "max_len": 64}
    params["train"]["epochs"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    script("stages/pretrain_behrt.py").main()
    m = json.loads((tmp_path / "metrics/pretrain_behrt.json").read_text())
    assert m["behrt.objective"] == "mlm" and m["behrt.train_patients"] >= 2
    assert "val.mlm_accuracy" in m and "tte_tasks" not in m
