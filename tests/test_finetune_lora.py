"""BEHRT fine-tuning modes: LoRA really trains adapters inside the attention and FFN layers
(the old project's LoRA wrapped a module whose forward bypassed them and trained nothing),
merges exactly, saves small; probe trains only the head."""

import dataclasses

import numpy as np
import pytest
import torch

from ehrseq.data.tensors import SequenceDataset, make_loader, toy_sequences
from ehrseq.models.behrt import (
    LORA_TARGETS,
    BEHRTConfig,
    BEHRTDataset,
    BEHRTSurvival,
    finetune_model,
    load_adapter,
    save_adapter,
    survival_loss,
)
from ehrseq.models.store import save_model
from ehrseq.params import FinetuneParams, TrainParams
from ehrseq.train.loop import fit

CFG = BEHRTConfig(vocab_size=300, hidden=64, layers=2, heads=4, intermediate=128, max_len=64,
                  n_bins=6, dropout=0.0)
FP = FinetuneParams(lora_r=4, lora_alpha=8.0, lora_dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    s = toy_sequences(64, vocab_size=CFG.vocab_size, max_visits=8, max_codes=5, seed=0)
    rng = np.random.default_rng(0)
    ds = BEHRTDataset(SequenceDataset(s, np.arange(64), s.n_visits, rng.exponential(200, 64),
                                      rng.integers(0, 2, 64), cuts=[30, 90, 180, 365, 730, 1500]),
                      CFG.max_len)
    return ds, ds[np.arange(16)]


@pytest.fixture(scope="module")
def encoder_state():
    torch.manual_seed(1)
    return BEHRTSurvival(CFG).encoder.state_dict()


def build(mode, encoder_state):
    torch.manual_seed(2)
    return finetune_model(mode, CFG, encoder_state, FP)


def one_step(model, ds, steps=1):
    fit(model, make_loader(ds, 16, shuffle=True), survival_loss,
        TrainParams(epochs=1, lr=1e-2, warmup_frac=0.0), max_steps=steps, checkpoint=False,
        progress=False, handle_sigterm=False)


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def base_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if "lora_" not in n and "head" not in n}


def test_lora_trains_exactly_the_adapters_and_the_head(data, encoder_state):
    ds, batch = data
    model = build("lora", encoder_state)
    h, i, r = CFG.hidden, CFG.intermediate, FP.lora_r
    per_layer = 4 * r * (h + h) + r * (h + i) + r * (i + h)   # q,k,v,out; fc1; fc2
    head = h * CFG.n_bins + CFG.n_bins
    params = trainable(model)
    assert sum(p.numel() for p in params.values()) == CFG.layers * per_layer + head
    assert {n.split(".")[-4] for n in params if "lora_" in n} == set(LORA_TARGETS)

    model.eval()
    plain = BEHRTSurvival(CFG).eval()
    plain.encoder.load_state_dict(encoder_state)
    plain.head.load_state_dict(model.base_model.model.head.modules_to_save["default"].state_dict())
    with torch.no_grad():
        out0 = model(batch)
        torch.testing.assert_close(out0, plain(batch))     # B = 0: starts as the base model
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(model(batch), out0, atol=1e-4)  # adapters are in the path
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()

    model.train()
    survival_loss(model, batch).backward()
    grads = {n: p.grad for n, p in trainable(model).items()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "head" in n)
    model.zero_grad()

    before = base_weights(model)
    lora_before = {n: p.detach().clone() for n, p in params.items()}
    one_step(model, ds, steps=2)
    assert all(torch.equal(p, before[n]) for n, p in base_weights(model).items())
    assert all(not torch.equal(p, lora_before[n]) for n, p in trainable(model).items()
               if "lora_" in n)   # after a step B != 0, so A gets gradient too and both move
    survival_loss(model, batch).backward()
    assert all(p.grad.abs().sum() > 0 for n, p in trainable(model).items() if "lora_A" in n)


def test_lora_merge_save_and_reload(data, encoder_state, tmp_path):
    ds, batch = data
    model = build("lora", encoder_state)
    one_step(model, ds, steps=3)
    model.eval()
    with torch.no_grad():
        adapted = model(batch)
    save_adapter(model, tmp_path / "adapter.safetensors")

    again = build("lora", encoder_state)
    load_adapter(again, tmp_path / "adapter.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(batch), adapted)

    merged = model.merge_and_unload()
    assert isinstance(merged, BEHRTSurvival)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(batch), adapted, atol=1e-5, rtol=1e-5)
    save_model(tmp_path / "full", merged, CFG)
    small = (tmp_path / "adapter.safetensors").stat().st_size
    assert small < 0.1 * (tmp_path / "full" / "model.safetensors").stat().st_size


def test_probe_trains_only_the_head(data, encoder_state):
    ds, _ = data
    model = build("probe", encoder_state)
    assert set(trainable(model)) == {"head.weight", "head.bias"}
    enc = {n: p.clone() for n, p in model.encoder.state_dict().items()}
    head = model.head.weight.detach().clone()
    one_step(model, ds)
    assert all(torch.equal(p, enc[n]) for n, p in model.encoder.state_dict().items())
    assert not torch.equal(model.head.weight, head)


def test_probe_encoder_runs_in_eval_mode_while_training(data, encoder_state):
    """Probe: the frozen encoder's dropout is off in training too (same features in training
    and scoring); full fine-tuning keeps it on."""
    ds, batch = data
    cfg = dataclasses.replace(CFG, dropout=0.3)
    probe = finetune_model("probe", cfg, encoder_state, FP)
    full = finetune_model("full", cfg, encoder_state, FP)
    probe.eval()
    probe.train()
    full.train()
    assert probe.training and probe.head.training and probe.drop.training
    assert not any(m.training for m in probe.encoder.modules())
    assert all(m.training for m in full.encoder.modules())
    with torch.no_grad():
        assert torch.equal(probe.encoder(batch), probe.encoder(batch))
        assert not torch.equal(full.encoder(batch), full.encoder(batch))
        # the head's own dropout still acts in training
        assert not torch.equal(probe(batch), probe(batch))

    seen = []   # inside the training loop, which calls train() every epoch
    fit(probe, make_loader(ds, 16, shuffle=True), survival_loss,
        TrainParams(epochs=2, lr=1e-2, warmup_frac=0.0), val_loader=make_loader(ds, 32),
        checkpoint=False, progress=False, handle_sigterm=False,
        on_step=lambda step: seen.append(any(m.training for m in probe.encoder.modules())))
    assert seen and not any(seen)
    probe.eval()
    assert not probe.training and not probe.head.training


def test_full_and_scratch(encoder_state):
    full, scratch = build("full", encoder_state), build("scratch", encoder_state)
    n = sum(p.numel() for p in BEHRTSurvival(CFG).parameters())
    assert sum(p.numel() for p in trainable(full).values()) == n
    assert sum(p.numel() for p in trainable(scratch).values()) == n
    w = "layers.0.attn.q_proj.weight"
    assert torch.equal(full.encoder.state_dict()[w], encoder_state[w])
    assert not torch.equal(scratch.encoder.state_dict()[w], encoder_state[w])
    with pytest.raises(ValueError, match="accepted"):
        finetune_model("adapter", CFG, encoder_state, FP)


def test_probe_computes_each_input_once_and_gives_the_encoders_numbers(data, encoder_state):
    """The probe keeps the frozen encoder's [CLS] state per distinct input: later epochs run the
    encoder on nothing new, and the features equal a fresh encoder pass (any batch composition,
    any padding width). Loading weights forgets them."""
    ds, batch = data
    probe = build("probe", encoder_state)
    calls = []
    probe.encoder.register_forward_hook(lambda m, i, o: calls.append(int(o.shape[0])))
    fit(probe, make_loader(ds, 16, shuffle=True), survival_loss,
        TrainParams(epochs=3, lr=1e-2, warmup_frac=0.0), checkpoint=False, progress=False,
        handle_sigterm=False)
    assert sum(calls) == len(ds)                        # the first of three epochs only
    small = ds[np.arange(3)]                              # another padding width
    with torch.no_grad():
        probe.features(batch)
        n = sum(calls)
        fresh = probe.encoder(batch)[:, 0]
        torch.testing.assert_close(probe.features(batch), fresh, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(probe.features(small), fresh[:3], atol=1e-5, rtol=1e-5)
    assert sum(calls) == n + len(fresh)                 # the check's own pass, nothing else
    probe.load_state_dict(probe.state_dict())
    with torch.no_grad():
        probe.features(small)
    assert calls[-1] == 3
