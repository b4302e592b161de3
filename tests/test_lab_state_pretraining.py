"""Lab-state pre-training (``pretrain.lab_state_weight``): the targets against a walk along each
input row, a head that learns them where predicting 0 cannot, and the stage end to end (with
fine-tuning reading its encoder, and a clear error on data without values)."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import script
from test_behrt import TINY

from ehrseq.data.tensors import Sequences, set_value_codes, toy_sequences
from ehrseq.io import InputError
from ehrseq.models.behrt import N_SPECIAL, BEHRTConfig
from ehrseq.models.pretraining import (
    IGNORE,
    BEHRTPretrain,
    PretrainDataset,
    code_log_freq,
    evaluate_pretraining,
    lab_state_targets,
    pretrain_loader,
    pretrain_loss,
)
from ehrseq.params import TrainParams
from ehrseq.train.loop import fit
from ehrseq.train.runtime import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")


def valued(s: Sequences, seed: int = 0) -> Sequences:
    """Every third code (no specials) carries a value, drawn at random."""
    rng = np.random.default_rng(seed)
    numeric = (np.arange(s.vocab_size) % 3 == 0) & (np.arange(s.vocab_size) >= N_SPECIAL)
    s.values = np.where(numeric[s.codes], rng.normal(size=len(s.codes)), np.nan).astype(
        np.float32)
    s.value_stats = {"codes": [t for i, t in enumerate(s.vocab["tokens"]) if numeric[i]]}
    return s


def model_for(s: Sequences, **kw) -> BEHRTPretrain:
    cfg = BEHRTConfig(vocab_size=s.vocab_size, lab_codes=len(s.value_stats["codes"]),
                      model_class="ehrseq.models.pretraining.BEHRTPretrain",
                      values=True, **{**TINY, "max_len": 32, **kw})
    return set_value_codes(BEHRTPretrain(cfg), s)


def test_targets_are_each_code_s_last_value_and_change_in_the_input():
    """Per row and numeric code: the last value the input holds and its change since the value
    before, known only where the input has one (two for the change); a token picked for MLM
    is not in the input."""
    s = valued(toy_sequences(40, vocab_size=15, max_visits=9, max_codes=5, seed=2))
    model = model_for(s)
    n = model.config.lab_codes
    x = PretrainDataset(s, np.arange(40), 32, mask_prob=0.3, seed=1, cut=False)[(0, np.arange(40))]
    target, known = lab_state_targets(model.value_code, x, n)
    assert target.shape == known.shape == (40, 2 * n)
    code_of = model.value_code.numpy()
    for i in range(40):   # walk the row in time order
        seen: dict[int, list[float]] = {}
        for j in range(x.tokens.shape[1]):
            t = int(x.tokens[i, j])
            if not x.mask[i, j] or x.mlm_labels[i, j] != IGNORE or code_of[t] < 0:
                continue
            seen.setdefault(int(code_of[t]), []).append(float(x.values[i, j]))
        want, have = np.zeros(2 * n), np.zeros(2 * n, bool)
        for c, vals in seen.items():
            want[c], have[c] = vals[-1], True
            if len(vals) > 1:
                want[n + c], have[n + c] = vals[-1] - vals[-2], True
        np.testing.assert_array_equal(known[i].numpy(), have)
        np.testing.assert_allclose(target[i].numpy(), want, atol=1e-6)
    assert known[:, :n].sum() > known[:, n:].sum() > 20          # changes are there, fewer
    picked = (x.mlm_labels != IGNORE) & (torch.from_numpy(code_of)[x.tokens.clamp(min=0)] >= 0)
    assert picked.any()                                           # masked values were skipped


def test_the_head_learns_the_lab_state_that_predicting_zero_cannot():
    s = valued(toy_sequences(500, vocab_size=15, max_visits=8, max_codes=4, seed=4), seed=1)
    tr, va = np.arange(400), np.arange(400, 500)
    seed_everything(0)
    model = model_for(s)
    w = {"mlm_weight": 1.0, "next_visit_weight": 0.0, "lab_state_weight": 1.0}
    lf = code_log_freq(s, tr)
    val = pretrain_loader(PretrainDataset(s, va, 32, seed=1, last_visit=True), 100)
    cpu = torch.device("cpu")
    before = evaluate_pretraining(model, val, lf, cpu, **w)
    fit(model, pretrain_loader(PretrainDataset(s, tr, 32), 32, shuffle=True),
        lambda m, b: pretrain_loss(m, b, **w),
        TrainParams(epochs=8, lr=3e-3, warmup_frac=0.05, patience=8),
        val_fn=lambda m, d: {"val_loss": evaluate_pretraining(m, val, lf, d, **w)["loss"]},
        monitor="val_loss", checkpoint=False, progress=False)
    after = evaluate_pretraining(model, val, lf, cpu, **w)
    assert before["lab_state_mse_zero"] == pytest.approx(after["lab_state_mse_zero"])
    wrapped = torch.nn.Sequential(model)   # a wrapper without the model's attributes, as DDP
    batch = PretrainDataset(s, va, 32, seed=1)[(0, np.arange(20))]
    torch.testing.assert_close(pretrain_loss(wrapped, batch, **w), pretrain_loss(model, batch, **w))
    assert after["lab_state_mse"] < 0.6 * after["lab_state_mse_zero"], after
    assert after["lab_state_mse"] < 0.6 * before["lab_state_mse"], (before, after)


def _workspace(tmp_path, monkeypatch, weight: float, values: bool):
    from test_tune import toy_workspace

    toy_workspace(tmp_path)
    seq_dir = tmp_path / "data/processed/sequences"
    if values:   # written beside, then in place of the memory-mapped originals
        valued(Sequences.load(seq_dir)).save(tmp_path / "valued")
        shutil.rmtree(seq_dir)
        (tmp_path / "valued").rename(seq_dir)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["pretrain"] = {"objective": "mlm", "lab_state_weight": weight}
    params["model"]["behrt"] = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32,
                                "max_len": 64}
    params["tune"]["finetune_lrs"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)


def test_stage_pretrains_the_lab_state_and_finetuning_reads_the_encoder(tmp_path, monkeypatch):
    _workspace(tmp_path, monkeypatch, 2.0, values=True)
    script("stages/pretrain_behrt.py").main()
    m = json.loads((tmp_path / "metrics/pretrain_behrt.json").read_text())
    assert m["val.lab_state_mse_zero"] > 0 and "val.lab_state_mse" in m
    assert m["val.lab_state_mse_margin"] == pytest.approx(
        m["val.lab_state_mse_zero"] - m["val.lab_state_mse"])
    cfg = json.loads((tmp_path / "models/pretrain_behrt/config.json").read_text())
    assert cfg["lab_codes"] == len(Sequences.load(tmp_path / "data/processed/sequences")
                                   .value_stats["codes"]) > 0
    script("stages/finetune_behrt.py").main("full")
    assert (tmp_path / "models/finetune_behrt/full").exists()
    # docs/tools/lab_state_probe.py reads the head back: one row per code, R² at most 1
    tool = script("docs/tools/lab_state_probe.py")
    codes = Sequences.load(tmp_path / "data/processed/sequences").value_stats["codes"][:2]
    rows = tool.run_rows(tmp_path, "toy", codes)
    assert [r["code"] for r in rows] == codes and all(r["n"] > 0 for r in rows)
    assert all(r["r2_last"] <= 1 for r in rows)
    tool.main(["--run", str(tmp_path), "--label", "toy", "--code", codes[0], "--title", "t",
               "--out", str(tmp_path / "page.md")])
    assert f"| toy | {codes[0]} |" in (tmp_path / "page.md").read_text()


def test_lab_state_without_values_is_an_error_naming_the_key(tmp_path, monkeypatch):
    _workspace(tmp_path, monkeypatch, 1.0, values=False)
    with pytest.raises(InputError, match=r"pretrain\.lab_state_weight: 1\.0.*numeric value"):
        script("stages/pretrain_behrt.py").main()
    assert not (tmp_path / "models/pretrain_behrt").exists()


@pytest.mark.parametrize("values,from_patients", [(False, 1), (True, 1), (True, 10**6)])
def test_auto_weight_is_on_where_the_data_has_values_and_patients(values, from_patients,
                                                                    tmp_path, monkeypatch):
    """``auto`` (the default): LAB_STATE_WEIGHT with numeric values from
    ``lab_state_from_patients`` pre-training patients on, off without values (no error) or
    below that count; the stage's metrics name the weight used. A negative weight is a
    parameter error."""
    from pydantic import ValidationError

    from ehrseq.params import LAB_STATE_WEIGHT, PretrainParams

    assert PretrainParams().lab_state_weight == "auto"
    with pytest.raises(ValidationError, match="lab_state_weight"):
        PretrainParams(lab_state_weight=-1)
    _workspace(tmp_path, monkeypatch, "auto", values=values)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    params["pretrain"]["lab_state_from_patients"] = from_patients
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    script("stages/pretrain_behrt.py").main()
    m = json.loads((tmp_path / "metrics/pretrain_behrt.json").read_text())
    on = values and m["behrt.train_patients"] >= from_patients
    assert on == (from_patients == 1 and values)
    assert m["behrt.lab_state_weight"] == (LAB_STATE_WEIGHT if on else 0.0)
    assert ("val.lab_state_mse" in m) == on
    cfg = json.loads((tmp_path / "models/pretrain_behrt/config.json").read_text())
    assert (cfg["lab_codes"] > 0) == on
