"""Sequence models that read time at day resolution, pool visits without dilution and start
from the baseline hazard (issue 26 parts 1, 3 and 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ehrseq.data.tensors import SequenceDataset, build_batch, toy_sequences
from ehrseq.models.behrt import BEHRTConfig, BEHRTSurvival, behrt_inputs, finetune_model
from ehrseq.models.losses import baseline_hazard_logits, hazard_to_survival, init_hazard_head
from ehrseq.models.lstm_survival import DiscreteTimeSurvivalLSTM, LSTMConfig
from ehrseq.params import FinetuneParams, TrainParams
from ehrseq.survival.bins import bin_targets
from ehrseq.train.loop import fit

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(hidden=32, layers=1, heads=4, intermediate=64, max_len=64, dropout=0.0)


def test_behrt_inputs_carry_days_before_the_landmark_and_gaps():
    s = toy_sequences(20, vocab_size=30, max_visits=7, max_codes=3, seed=2)
    idx = np.arange(20)
    lm = np.maximum(1, s.n_visits - 1)
    x = behrt_inputs(build_batch(s, idx, lm), 64)
    for i in idx:
        first = s.patient_offsets[i]
        last = first + lm[i] - 1
        n = int(x.mask[i].sum())
        for j in range(1, n):   # every real token after [CLS]
            v = last - int(x.visit_back[i, j])            # the token's visit
            before = s.visit_time[last] - s.visit_time[v]
            gap = s.visit_time[v] - s.visit_time[v - 1] if v > first else 0.0
            assert float(x.time[i, j, 0]) == pytest.approx(np.log1p(before) / 10, abs=1e-4)
            assert float(x.time[i, j, 1]) == pytest.approx(np.log1p(gap) / 10, abs=1e-5)
            assert float(x.time[i, j, 2]) == pytest.approx(s.visit_age[v] / 100, abs=1e-6)
        assert int(x.visit_back[i, n - 1]) == 0           # the last token: the landmark's visit
        assert float(x.time[i, 0, 0]) == 0.0              # [CLS] sits at the landmark
        assert float(x.time[i, 0, 2]) == pytest.approx(s.visit_age[last] / 100, abs=1e-6)


def _two_patients_differing_in_one_gap(s):
    """Two copies of patient 0 whose last gap differs by 200 days, ages to the same year."""
    a = build_batch(s, [0, 0], [3, 3])
    a.gap_days[1, 2] += 200.0
    return a


def test_days_mode_sees_a_gap_that_years_mode_cannot():
    s = toy_sequences(10, vocab_size=30, max_visits=6, max_codes=3, seed=0)
    s.patient_offsets[:2] = [0, 5]   # patient 0 has >= 3 visits
    batch = _two_patients_differing_in_one_gap(s)
    outs = {}
    for time in ("years", "days"):
        torch.manual_seed(0)
        m = BEHRTSurvival(BEHRTConfig(vocab_size=30, n_bins=4, time=time, **TINY)).eval()
        with torch.no_grad():
            if time == "days":   # as after training: the projection starts at zero
                m.encoder.time.proj.weight.normal_()
                assert torch.equal(m.encoder.time.proj.bias, torch.zeros(32))
            outs[time] = m(behrt_inputs(batch, 64))
    assert torch.equal(outs["years"][0], outs["years"][1])   # whole years: the gap is invisible
    assert not torch.allclose(outs["days"][0], outs["days"][1], atol=1e-4)


def test_days_mode_counts_positions_back_from_the_landmark():
    """The landmark's visit has the same position whatever the history's length: the model
    with one more old visit gives the landmark's tokens the same position embedding."""
    s = toy_sequences(10, vocab_size=30, max_visits=8, max_codes=3, seed=3)
    i = int(np.flatnonzero(s.n_visits >= 4)[0])
    x = behrt_inputs(build_batch(s, [i, i], [4, 4], max_visits=np.array([2, 4])), 64)
    n = x.mask.sum(1)
    assert x.visit_back[0, n[0] - 1] == x.visit_back[1, n[1] - 1] == 0
    assert x.position[0, n[0] - 1] != x.position[1, n[1] - 1]   # forward: it moves


@pytest.mark.parametrize("pool", ["mean", "sum", "attention"])
def test_lstm_pools_and_reads_days_before_the_landmark(pool):
    s = toy_sequences(12, vocab_size=30, max_visits=6, max_codes=5, seed=1)
    s.patient_offsets[:2] = [0, 5]
    torch.manual_seed(0)
    m = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=30, n_bins=4, embed_dim=8, hidden_dim=8,
                                            pool=pool, time="days", dropout=0.0)).eval()
    batch = build_batch(s, np.arange(12), np.maximum(1, s.n_visits - 1))
    x = m.encode_visits(batch)
    assert torch.isfinite(x).all() and x.shape[-1] == 8 + 3
    assert (x[~batch.visit_mask] == 0).all()               # padded visits stay zero
    with torch.no_grad():
        assert torch.isfinite(m(batch)).all()
    two = _two_patients_differing_in_one_gap(s)   # the older gap changes days-before too
    two.gap_days[1, 2] = two.gap_days[0, 2]
    two.gap_days[1, 1] += 300.0
    feats = m.encode_visits(two)[:, :, -1]
    assert feats[1, 0] > feats[0, 0]   # the first visit lies 300 days further back


def test_attention_pool_can_weight_one_code_over_many():
    m = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=20, n_bins=2, embed_dim=4, hidden_dim=4,
                                            pool="attention", dropout=0.0))
    with torch.no_grad():   # a score that favours code 7 alone
        m.score.weight.zero_()
        m.embed.weight.zero_()
        m.embed.weight[7] = torch.tensor([50.0, 0, 0, 0])
        m.score.weight[0, 0] = 1.0
    s = toy_sequences(1, vocab_size=20, max_visits=1, max_codes=1, seed=0)
    s.codes = np.array([7] + [3] * 16, dtype=s.codes.dtype)  # one visit: code 7 and 16 others
    s.values = np.full(len(s.codes), np.nan, np.float32)   # no values: one per token
    s.visit_offsets = np.array([0, 17], dtype=np.int64)
    v = m.pool_codes(build_batch(s, [0], [1]))[0, 0]
    assert float(v[0].detach()) > 49.0   # a mean would give 50/17


def test_baseline_hazards_are_the_life_table_of_the_training_split():
    rng = np.random.default_rng(0)
    dur, ev = rng.exponential(300, 500), rng.integers(0, 2, 500)
    cuts = [0, 60, 180, 365, 730]
    idx, e = bin_targets(dur, ev, cuts)
    logits = baseline_hazard_logits(idx, e, 4)
    for k in range(4):
        at_risk, events = (idx >= k).sum(), ((idx == k) & (e > 0)).sum()
        assert float(torch.sigmoid(logits[k])) == pytest.approx((events + 0.5) / (at_risk + 1),
                                                                rel=1e-5)
    s = toy_sequences(500, vocab_size=20, max_visits=3, max_codes=2, seed=0)
    data = SequenceDataset(s, np.arange(500), np.ones(500, np.int64), dur, ev, cuts)
    m = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=20, n_bins=4, embed_dim=4, hidden_dim=4))
    assert m.head.weight.abs().sum() > 0          # PyTorch's random init ...
    init_hazard_head(m.head, data)
    with torch.no_grad():   # ... set to zero: every patient gets the population's curve
        surv = hazard_to_survival(m(data[np.arange(5)]))
    assert not m.head.weight.any()
    km_like = torch.cumprod(torch.sigmoid(-logits), 0)
    assert torch.allclose(surv[:, 1:], km_like.expand(5, -1), atol=1e-6)
    with pytest.raises(ValueError, match=r"target bins must lie in \[0, 3\)"):
        baseline_hazard_logits(idx, e, 3)


def test_full_finetuning_trains_the_head_faster_and_starts_it_at_the_baseline(monkeypatch):
    from ehrseq.data.tensors import make_loader
    from ehrseq.models.behrt import BEHRTDataset, survival_loss

    s = toy_sequences(40, vocab_size=30, max_visits=4, max_codes=3, seed=0)
    rng = np.random.default_rng(0)
    data = SequenceDataset(s, np.arange(40), np.ones(40, np.int64), rng.exponential(200, 40),
                           rng.integers(0, 2, 40), [0, 100, 300, 900])
    cfg = BEHRTConfig(vocab_size=30, n_bins=3, **TINY)
    enc = BEHRTSurvival(cfg).encoder.state_dict()
    model = finetune_model("full", cfg, enc, FinetuneParams(head_lr_scale=10.0), data)
    assert torch.allclose(model.head.bias, baseline_hazard_logits(data.target_bin,
                                                                  data.target_event, 3))
    made = []
    init = torch.optim.AdamW.__init__

    def keep(self, *a, **k):   # the real AdamW, a handle kept on the one fit makes
        init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", keep)
    fit(model, make_loader(BEHRTDataset(data, 64), 8), survival_loss,
        TrainParams(epochs=1, batch_size=8, lr=1e-4, warmup_frac=0.0, schedule="constant"),
        checkpoint=False, progress=False, handle_sigterm=False)
    groups = [(g["lr_scale"], g["lr"], len(g["params"])) for g in made[0].param_groups]
    assert groups[0][0] == 1.0 and groups[0][1] == pytest.approx(1e-4)   # the encoder
    head = [g for g in groups if g[0] == 10.0]
    assert head and all(lr == pytest.approx(1e-3) for _, lr, _ in head)
    assert sum(n for *_, n in head) == 2   # head.weight and head.bias


def _finetune_stage_over(tmp_path, monkeypatch, **design):
    """stages/finetune_behrt.py, loaded, in a toy workspace whose pre-trained BEHRT has
    ``design`` (BEHRTConfig fields) on a small architecture."""
    import importlib.util
    from pathlib import Path

    from test_tune import pretrained_models, toy_workspace

    from ehrseq.data.tensors import Sequences
    from ehrseq.models.pretraining import BEHRTPretrain
    from ehrseq.models.store import save_model

    root = Path(__file__).resolve().parents[1]
    toy_workspace(tmp_path)
    seqs = Sequences.load(tmp_path / "data/processed/sequences")
    pretrained_models(tmp_path, seqs.vocab_size, seqs.vocab)
    old = BEHRTConfig(vocab_size=seqs.vocab_size, hidden=16, layers=1, heads=2, intermediate=32,
                      max_len=64, **design,
                      model_class="ehrseq.models.pretraining.BEHRTPretrain")
    save_model(tmp_path / "models/pretrain_behrt", BEHRTPretrain(old), old, seqs.vocab)
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("ft_stage", root / "stages/finetune_behrt.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


@pytest.mark.parametrize("field, message", [
    ({"time": "years"}, r"time 'years', but params.yaml model.behrt.time is 'days'"),
    ({"rotary": True}, r"rotary True, but params.yaml model.behrt.rotary is False"),
    ({"values": True}, r"values True, but params.yaml model.behrt.values is 'auto' \(False on "
                       r"these sequences\)"),
    ({"value_deltas": True}, r"value_deltas True, but params.yaml model.behrt.value_deltas is "
                             r"'auto' \(False on these sequences\)"),
])
def test_finetuning_refuses_a_pretrained_model_of_another_design(tmp_path, monkeypatch, field,
                                                                  message):
    """A pre-trained BEHRT whose time or value design differs from params.yaml's
    model.behrt.time / values / value_deltas is a parameter error naming both, before any
    training (issue 26, bad input)."""
    from ehrseq.io import InputError

    stage = _finetune_stage_over(tmp_path, monkeypatch, **field)
    with pytest.raises(InputError, match=message):
        stage.main("full")
    assert not (tmp_path / "models/finetune_behrt").exists()   # nothing written


def test_scratch_takes_its_architecture_from_params_not_from_pretraining(tmp_path, monkeypatch):
    """finetune_behrt scratch trains random weights of the architecture params.yaml sets: a
    pre-trained model of another design (here with value changes) neither stops it nor leaks
    into it, and the full mode on the same workspace is refused."""
    import json

    from ehrseq.io import InputError

    stage = _finetune_stage_over(tmp_path, monkeypatch, value_deltas=True, dropout=0.4)
    with pytest.raises(InputError, match="value_deltas True"):
        stage.main("full")
    stage.main("scratch")
    cfg = json.loads((tmp_path / "models/finetune_behrt/scratch/config.json").read_text())
    assert cfg["value_deltas"] is False and cfg["dropout"] != 0.4 and cfg["hidden"] != 16
