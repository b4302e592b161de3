"""BEHRT: input layout, padding invariance, fused attention, MLM masking, next-visit targets,
and pre-training that beats the no-training baselines on a cohort with learnable structure."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ehrseq.data.tensors import Sequences, build_batch, set_value_codes, toy_sequences
from ehrseq.models.behrt import (
    BEHRT,
    CLS,
    MASK,
    SEP,
    BEHRTBatch,
    BEHRTConfig,
    BEHRTSurvival,
    behrt_config,
    behrt_inputs,
)
from ehrseq.models.pretraining import (
    IGNORE,
    BEHRTPretrain,
    PretrainDataset,
    code_log_freq,
    evaluate_pretraining,
    mask_tokens,
    pretrain_loader,
    pretrain_loss,
)
from ehrseq.models.store import load_model, save_model
from ehrseq.params import BEHRTParams, ModelParams, TrainParams
from ehrseq.train.loop import fit
from ehrseq.train.runtime import seed_everything

TINY = dict(hidden=32, layers=2, heads=4, intermediate=64, max_len=64, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_tokens(seqs, p, n_visits, max_len):
    """The layout by hand, one patient at a time: [CLS] + the most recent tokens."""
    stream = []
    for v in range(seqs.patient_offsets[p], seqs.patient_offsets[p] + n_visits):
        stream += seqs.codes[seqs.visit_offsets[v]:seqs.visit_offsets[v + 1]].tolist() + [SEP]
    return [CLS] + stream[-(max_len - 1):]


@pytest.mark.parametrize("max_len", [8, 13, 200])
def test_inputs_layout_matches_a_hand_built_reference(max_len):
    s = toy_sequences(30, vocab_size=40, max_visits=9, max_codes=5, seed=1)
    idx = np.arange(30)
    lm = np.maximum(1, s.n_visits - 1)
    x = behrt_inputs(build_batch(s, idx, lm), max_len)
    assert x.tokens.shape[1] <= max_len
    for i in idx:
        ref = reference_tokens(s, i, lm[i], max_len)
        n = int(x.mask[i].sum())
        assert x.tokens[i, :n].tolist() == ref and not x.mask[i, n:].any()
        pos = x.position[i, :n]
        assert pos[0] == 0 and pos[1] == 1 and (pos.diff() >= 0).all()
        seps = x.tokens[i, :n] == SEP  # a visit's number goes up by one after its [SEP]
        assert (pos[1:].diff() == seps[1:-1].long()).all()
        assert torch.equal(x.segment[i, 1:n], (pos[1:] - 1) % 2)


def test_sizes_and_overrides():
    counts = {size: sum(p.numel() for p in BEHRT(behrt_config(ModelParams(size=size), 1000))
                        .parameters()) for size in ("tiny", "small", "medium", "large")}
    assert 0.1e6 < counts["tiny"] < 0.3e6
    assert 0.8e6 < counts["small"] < 1.5e6
    assert 2e6 < counts["medium"] < 8e6
    assert 18e6 < counts["large"] < 23e6
    cfg = behrt_config(ModelParams(size="large", behrt=BEHRTParams(hidden=64, heads=2)), 100)
    assert (cfg.hidden, cfg.heads, cfg.layers, cfg.intermediate, cfg.max_len) == (64, 2, 6, 2048, 512)
    with pytest.raises(ValueError, match="model.behrt.heads"):
        behrt_config(ModelParams(behrt=BEHRTParams(hidden=30, heads=4)), 100)


def test_forward_shapes_and_padding_invariance():
    s = toy_sequences(12, vocab_size=40, max_visits=10, max_codes=5, seed=2)
    torch.manual_seed(0)
    model = BEHRTSurvival(BEHRTConfig(vocab_size=40, n_bins=6, **TINY)).eval()
    x = behrt_inputs(build_batch(s, np.arange(12), s.n_visits), 64)
    logits = model(x)
    assert logits.shape == (12, 6)
    hidden = model.encoder(x)
    assert hidden.shape == (12, x.tokens.shape[1], 32)

    def pad(t, n=7):
        return F.pad(t, (0, n))

    padded = BEHRTBatch(tokens=pad(x.tokens), age=pad(x.age), segment=pad(x.segment),
                        position=pad(x.position), mask=pad(x.mask), rows=x.rows,
                        visit_back=pad(x.visit_back), time=F.pad(x.time, (0, 0, 0, 7)))
    with torch.no_grad():
        again = model.encoder(padded)[:, :x.tokens.shape[1]]
    m = x.mask
    torch.testing.assert_close(again[m], hidden[m], atol=1e-5, rtol=1e-5)
    alone = behrt_inputs(build_batch(s, [0], s.n_visits[:1]), 64)   # no batch-mates at all
    torch.testing.assert_close(model(alone), logits[:1], atol=1e-5, rtol=1e-5)


def test_cls_landmark_readout_adds_the_landmark_visit_s_mean_state():
    """finetune.readout cls_landmark: the head (2 x hidden wide) reads [CLS] beside the mean
    state of the landmark visit's tokens (its codes and [SEP]), here found by hand in each
    patient's token stream (after the last [SEP] but one); ``cls`` reads [CLS] alone; an
    unknown readout is refused."""
    from ehrseq.models.behrt import readout

    s = toy_sequences(12, vocab_size=40, max_visits=10, max_codes=5, seed=2)
    torch.manual_seed(0)
    model = BEHRTSurvival(BEHRTConfig(vocab_size=40, n_bins=6, readout="cls_landmark",
                                      **TINY)).eval()
    assert model.head.in_features == 2 * 32
    x = behrt_inputs(build_batch(s, np.arange(12), s.n_visits), 64)
    with torch.no_grad():
        h = model.encoder(x)
        r = readout(h, x, "cls_landmark")
        logits = model(x)
    assert r.shape == (12, 64) and logits.shape == (12, 6)
    for i in range(12):
        n = int(x.mask[i].sum())
        toks = x.tokens[i, :n].tolist()
        seps = [j for j, t in enumerate(toks) if t == SEP]
        start = seps[-2] + 1 if len(seps) > 1 else 1      # the landmark visit: after the
        torch.testing.assert_close(r[i, :32], h[i, 0])    # last [SEP] but one, to the end
        torch.testing.assert_close(r[i, 32:], h[i, start:n].mean(0))
    torch.testing.assert_close(readout(h, x, "cls"), h[:, 0])
    with pytest.raises(ValueError, match="readout 'last'; accepted"):
        BEHRTSurvival(BEHRTConfig(vocab_size=40, n_bins=6, readout="last", **TINY))


def test_behrt_dropout_is_its_own_or_model_dropout():
    """model.behrt.dropout sets BEHRT's dropout; null keeps model.dropout (shared with Med2Vec +
    head and the trajectory model)."""
    assert behrt_config(ModelParams(dropout=0.2), 100).dropout == 0.2
    cfg = behrt_config(ModelParams(dropout=0.2, behrt=BEHRTParams(dropout=0.5)), 100)
    assert cfg.dropout == 0.5
    model = BEHRT(cfg)
    assert model.drop.p == 0.5 and model.layers[0].drop.p == 0.5


def test_attention_is_the_fused_sdpa_kernel(monkeypatch):
    model = BEHRT(BEHRTConfig(vocab_size=40, **TINY))
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    s = toy_sequences(4, vocab_size=40, seed=3)
    model(behrt_inputs(build_batch(s, np.arange(4), s.n_visits), 64))
    assert len(calls) == TINY["layers"] and calls[0][1] == TINY["heads"]


def test_masking_80_10_10_and_new_masks_every_epoch():
    tokens = torch.randint(5, 1000, (200, 500))
    tokens[:, ::10] = SEP
    inputs, labels = mask_tokens(tokens, 1000, 0.15, np.random.default_rng(0))
    picked = labels != IGNORE
    assert not picked[:, ::10].any()                            # specials are never picked
    assert picked.float().mean().item() == pytest.approx(0.15 * 0.9, abs=0.003)
    assert torch.equal(labels[picked], tokens[picked]) and torch.equal(inputs[~picked], tokens[~picked])
    as_mask = (inputs[picked] == MASK).float().mean().item()
    kept = (inputs[picked] == tokens[picked]).float().mean().item()
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1 + 0.1 / 995, abs=0.01)  # 10% kept (+ random hits itself)
    assert 1 - as_mask - kept == pytest.approx(0.1, abs=0.01)

    s = toy_sequences(60, vocab_size=40, max_visits=8, max_codes=5, seed=4)
    ds = PretrainDataset(s, np.arange(60), 64, mask_prob=0.3, seed=1)
    rows = np.arange(20)
    a, a2, b = ds[(0, rows)], ds[(0, rows)], ds[(1, rows)]
    assert torch.equal(a.mlm_labels, a2.mlm_labels) and torch.equal(a.tokens, a2.tokens)
    assert not torch.equal(a.mlm_labels, b.mlm_labels) or not torch.equal(a.tokens, b.tokens)


def test_next_visit_target_is_the_visit_after_the_input():
    s = toy_sequences(40, vocab_size=60, max_visits=8, max_codes=5, seed=5)
    ds = PretrainDataset(s, np.arange(40), 512, mask_prob=1e-9, seed=0, last_visit=True)
    x = ds[(3, np.arange(40))]
    for i in range(40):
        n_input = int((x.tokens[i] == SEP).sum())          # visits in the input
        v = s.patient_offsets[i] + n_input                   # the next visit
        assert n_input <= s.n_visits[i]
        assert x.has_next[i] == (n_input < s.n_visits[i])
        if x.has_next[i]:
            want = set(s.codes[s.visit_offsets[v]:s.visit_offsets[v + 1]].tolist())
            assert set(torch.nonzero(x.next_visit[i]).view(-1).tolist()) == want
        last = set(s.codes[s.visit_offsets[v - 1]:s.visit_offsets[v]].tolist())
        assert set(torch.nonzero(x.last_visit[i]).view(-1).tolist()) == last


def typed_cohort(n, seed=0, n_types=6, per_type=5):
    """Each patient has a type; every visit holds 3 codes of that type's 5: a code is
    predictable from its context and the next visit from the past, not from frequency."""
    rng = np.random.default_rng(seed)
    n_vis = rng.integers(2, 9, n)
    owner = np.repeat(np.arange(n), n_vis)
    po = np.concatenate([[0], np.cumsum(n_vis)])
    kind = rng.integers(0, n_types, n)[owner]
    codes = 5 + per_type * kind[:, None] + rng.integers(0, per_type, (len(owner), 3))
    vocab = 5 + n_types * per_type
    specials = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    return Sequences(
        codes=codes.reshape(-1).astype(np.int32), visit_offsets=np.arange(0, 3 * len(owner) + 1, 3),
        patient_offsets=po, visit_time=18_000 + 30.0 * (np.arange(len(owner)) - po[owner]),
        visit_age=np.full(len(owner), 40, np.float32),
        patients=pd.DataFrame({"patient": [f"p{i}" for i in range(n)], "split": "train",
                               "n_visits": n_vis}),
        vocab={"tokens": list(specials) + [f"T/{i}" for i in range(5, vocab)],
               "counts": [0] * vocab, "specials": specials})


def test_pretraining_beats_the_no_training_baselines(tmp_path):
    s = typed_cohort(500)
    tr, va = np.arange(400), np.arange(400, 500)
    cfg = BEHRTConfig(vocab_size=s.vocab_size, model_class="ehrseq.models.pretraining.BEHRTPretrain",
                      **{**TINY, "max_len": 32})
    seed_everything(0)
    model = BEHRTPretrain(cfg)
    log_freq = code_log_freq(s, tr)
    val = pretrain_loader(PretrainDataset(s, va, 32, last_visit=True, seed=1), 100)
    cpu = torch.device("cpu")
    before = evaluate_pretraining(model, val, log_freq, cpu)
    fit(model, pretrain_loader(PretrainDataset(s, tr, 32), 32, shuffle=True), pretrain_loss,
        TrainParams(epochs=8, lr=3e-3, warmup_frac=0.05, patience=8),
        val_fn=lambda m, d: {"val_loss": evaluate_pretraining(m, val, log_freq, d)["loss"]},
        monitor="val_loss", checkpoint=False, progress=False)
    res = evaluate_pretraining(model, val, log_freq, cpu)
    assert res["loss"] < before["loss"] - 1.0
    assert res["mlm_accuracy"] > res["mlm_accuracy_freq"] + 0.08, res
    assert res["mlm_perplexity"] < 0.6 * res["mlm_perplexity_freq"], res
    for m in ("next_visit_recall_at_10", "next_visit_auprc"):
        assert res[m] > max(res[f"{m}_freq"], res[f"{m}_prev"]) + 0.1, res

    save_model(tmp_path / "pre", model, cfg, s.vocab)   # tied decoder survives the round trip
    loaded, _, _ = load_model(tmp_path / "pre")
    assert loaded.mlm_decoder.weight is loaded.encoder.tokens.weight
    assert evaluate_pretraining(loaded, val, log_freq, cpu) == pytest.approx(res)


def test_values_enter_at_their_tokens_and_masked_values_are_hidden():
    """model.behrt.values: each code position carries its token's value (0 at [CLS], [SEP] and
    value-less codes); the value vectors start at zero (the same encoder as without values)
    and, once learnt, a value changes the output; MLM hides a picked code's value."""
    s = toy_sequences(30, vocab_size=40, max_visits=9, max_codes=5, seed=1)
    rng = np.random.default_rng(0)
    s.values = np.where(rng.random(len(s.codes)) < 0.4, rng.normal(size=len(s.codes)),
                        np.nan).astype(np.float32)
    idx, lm = np.arange(30), np.maximum(1, s.n_visits - 1)
    x = behrt_inputs(build_batch(s, idx, lm), 13)
    for i in idx:   # the values stream by hand, as reference_tokens builds the codes
        stream = []
        for v in range(s.patient_offsets[i], s.patient_offsets[i] + lm[i]):
            stream += np.nan_to_num(s.values[s.visit_offsets[v]:s.visit_offsets[v + 1]]).tolist()
            stream += [0.0]
        ref = [0.0] + stream[-12:]
        np.testing.assert_allclose(x.values[i, :len(ref)].numpy(), ref, atol=1e-6)
        assert not x.values[i, len(ref):].any()
    plain = BEHRT(BEHRTConfig(vocab_size=40, **TINY)).eval()
    model = BEHRT(BEHRTConfig(vocab_size=40, values=True, **TINY)).eval()
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["value.weight"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))
        torch.nn.init.normal_(model.value.weight, std=0.5)
        changed = x._map(lambda t: t.clone())
        changed.values[x.values != 0] += 1.0
        assert not torch.allclose(model(changed), model(x))

    ds = PretrainDataset(s, idx, 64, mask_prob=0.5, seed=1)
    b = ds[(0, idx)]
    picked = b.mlm_labels != IGNORE
    assert picked.any() and not b.values[picked].any()
    assert b.values[~picked].abs().sum() > 0


def test_value_deltas_are_each_value_s_change_within_the_input():
    """model.behrt.value_deltas: every valued token carries its value minus the row's previous
    value of the same code within the input window ([CLS] + the most recent tokens), 0 for a
    first one and at [CLS], [SEP] and value-less codes; the delta vectors start at zero (the
    same encoder as without them), and a code masked to [MASK] in pre-training has no change
    (the next value's change skips it)."""
    s = toy_sequences(30, vocab_size=12, max_visits=9, max_codes=5, seed=2)
    rng = np.random.default_rng(0)
    numeric = np.arange(s.vocab_size) % 3 == 0   # every third code carries a value
    s.values = np.where(numeric[s.codes], rng.normal(size=len(s.codes)), np.nan).astype(np.float32)
    s.value_stats = {"codes": [t for i, t in enumerate(s.vocab["tokens"]) if numeric[i]]}
    model = BEHRT(BEHRTConfig(vocab_size=12, value_deltas=True, **TINY)).eval()
    set_value_codes(model, s)
    assert ((model.value_code >= 0) == torch.from_numpy(numeric)).all()
    idx, lm = np.arange(30), np.maximum(1, s.n_visits - 1)
    x = behrt_inputs(build_batch(s, idx, lm), 13)
    deltas = model.value_deltas(x)
    for i in idx:   # the stream by hand, cut like the tokens, then the changes along it
        toks, vals = [], []
        for v in range(s.patient_offsets[i], s.patient_offsets[i] + lm[i]):
            a, b = s.visit_offsets[v], s.visit_offsets[v + 1]
            toks += s.codes[a:b].tolist() + [SEP]
            vals += np.nan_to_num(s.values[a:b]).tolist() + [0.0]
        last, ref = {}, [0.0]
        for t, val in zip(toks[-12:], vals[-12:], strict=True):
            ref.append(val - last[t] if numeric[t] and t in last else 0.0)
            if numeric[t]:
                last[t] = val
        np.testing.assert_allclose(deltas[i, :len(ref)].numpy(), ref, atol=1e-6)
        assert not deltas[i, len(ref):].any()
    assert (deltas != 0).sum() > 20
    plain = BEHRT(BEHRTConfig(vocab_size=12, **TINY)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))
        torch.nn.init.normal_(model.delta.weight, std=0.5)
        assert not torch.allclose(model(x), plain(x))
    ds = PretrainDataset(s, idx, 64, mask_prob=0.5, seed=1)
    b = ds[(0, idx)]
    assert (b.tokens == MASK).any() and not model.value_deltas(b)[b.tokens == MASK].any()


def test_value_deltas_give_behrt_a_trend(tmp_path):
    """The LSTM's trend cohort (tests/test_lstm_survival.py): the risk lies in a lab value's
    change between the last two visits, each level alone is noise. BEHRT learns it with
    ``value_deltas`` and not from the values alone."""
    from lifelines.utils import concordance_index
    from test_lstm_survival import _split, _trend_cohort

    from ehrseq.data.tensors import make_loader
    from ehrseq.models.behrt import BEHRTDataset, survival_loss
    from ehrseq.models.inference import predict

    *cohort, rise = _trend_cohort(800, seed=11)
    s, landmark, dur, ev, tr, va, train, val = _split(cohort, tmp_path)
    train, val = BEHRTDataset(train, 64), BEHRTDataset(val, 64)
    val_loader = make_loader(val, 100)
    c = {}
    for deltas in (False, True):
        seed_everything(0)
        model = BEHRTSurvival(BEHRTConfig(vocab_size=s.vocab_size, n_bins=6, hidden=16,
                                          layers=1, heads=2, intermediate=32, max_len=64,
                                          dropout=0.0, values=True, value_deltas=deltas))
        set_value_codes(model, s)
        fit(model, make_loader(train, 32, shuffle=True), survival_loss,
            TrainParams(epochs=8, lr=3e-3, warmup_frac=0.0, patience=8),
            val_loader=val_loader, checkpoint=False, progress=False)
        risk = predict(model, val_loader, lambda m, b: -m.predict_survival(b)[:, -1], len(va))
        c[deltas] = concordance_index(dur[va], -risk, ev[va])
    oracle = concordance_index(dur[va], -(rise[va] > 0).astype(float), ev[va])
    assert c[True] > oracle - 0.05 and c[True] > c[False] + 0.1, (c, oracle)


def test_rotary_attention_depends_on_the_days_between_tokens():
    """model.behrt.rotary (CLMBR's rotary positions by days): the rotated dot product of two
    vectors depends only on the difference of their days; a BEHRT that reads time only through
    rotary attention (time 'years') changes its states when the days between the visits change,
    and does not without rotary; an odd head size is refused naming the keys."""
    from ehrseq.models.behrt import rotary_angles, rotate

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)

    def dot(dq, dk):
        cq, sq = rotary_angles(torch.tensor([[dq]]), 8)
        ck, sk = rotary_angles(torch.tensor([[dk]]), 8)
        return float((rotate(q, cq, sq) * rotate(k, ck, sk)).sum())

    assert dot(30.0, 10.0) == pytest.approx(dot(120.0, 100.0), abs=1e-4)
    assert abs(dot(30.0, 10.0) - dot(30.0, 29.0)) > 1e-3
    assert dot(0.0, 0.0) == pytest.approx(float((q * k).sum()), abs=1e-6)

    s = toy_sequences(6, vocab_size=40, max_visits=6, max_codes=4, seed=5)
    x = behrt_inputs(build_batch(s, np.arange(6), s.n_visits), 64)
    later = behrt_inputs(build_batch(s, np.arange(6), s.n_visits), 64)
    later.time[..., 0] = torch.log1p(torch.expm1(10 * x.time[..., 0]) * 3) / 10   # 3x the days
    for rotary, moves in ((True, True), (False, False)):
        torch.manual_seed(0)
        model = BEHRT(BEHRTConfig(vocab_size=40, time="years", rotary=rotary, **TINY)).eval()
        with torch.no_grad():
            diff = (model(x) - model(later))[x.mask].abs().max()
        assert bool(diff > 1e-3) is moves
    with pytest.raises(ValueError, match="model.behrt.rotary needs an even head size"):
        behrt_config(ModelParams(behrt=BEHRTParams(rotary=True, hidden=36, heads=4)), 40)
    assert behrt_config(ModelParams(behrt=BEHRTParams(rotary=True)), 40).rotary


def test_throughput_bench_pads_every_input_the_model_reads():
    """bench/behrt_throughput.py's padded batches (HF's padding='max_length') carry every input
    BEHRT reads, day-level time and rotary attention included, so padding changes no real
    token's state (the bench crashed once ``time: days`` became the default: its padded batches
    lacked the time inputs)."""
    from conftest import script

    bench = script("bench/behrt_throughput.py")
    seqs = bench.cohort(8, 100, 64, 0.3)
    x = PretrainDataset(seqs, np.arange(8), 64, cut=False)[(0, np.arange(8))]
    wide = bench.padded(x, 96)
    assert wide.tokens.shape[1] == 96 > x.tokens.shape[1]
    torch.manual_seed(0)
    model = BEHRT(BEHRTConfig(vocab_size=100, rotary=True, **TINY)).eval()
    with torch.no_grad():
        narrow, padded = model(x), model(wide)[:, :x.tokens.shape[1]]
    torch.testing.assert_close(padded[x.mask], narrow[x.mask], atol=1e-5, rtol=1e-5)
