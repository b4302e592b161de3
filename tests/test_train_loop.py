"""The training loop: resume bit-identically, survive corrupt checkpoints, stop early."""

import os
import signal

import numpy as np
import pytest
import torch

from ehrseq.data.tensors import SequenceDataset, make_loader, toy_sequences
from ehrseq.models.lstm_survival import DiscreteTimeSurvivalLSTM, LSTMConfig, survival_loss
from ehrseq.params import RuntimeParams, TrainParams
from ehrseq.train.checkpoint import list_checkpoints, load_checkpoint, read_checkpoint
from ehrseq.train.loop import fit
from ehrseq.train.schedule import LRSchedule

EPOCHS = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    s = toy_sequences(60, vocab_size=20, max_visits=6, max_codes=3, seed=0)
    rng = np.random.default_rng(0)
    landmark = np.floor(rng.uniform(1, s.n_visits + 1)).astype(int)
    dur, ev = rng.uniform(1, 900, 60), rng.integers(0, 2, 60)
    tr, va = np.arange(48), np.arange(48, 60)
    cuts = [0, 100, 300, 1000]
    return (SequenceDataset(s, tr, landmark[tr], dur[tr], ev[tr], cuts),
            SequenceDataset(s, va, landmark[va], dur[va], ev[va], cuts))


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = LSTMConfig(vocab_size=20, n_bins=3, embed_dim=8, hidden_dim=8, layers=2, dropout=0.2)
    return DiscreteTimeSurvivalLSTM(cfg)  # dropout on, so resuming must restore the RNG


def _run(data, tmp_path, key, model_seed=0, live=False, **kw):
    """Six batches of 8 per epoch, validation each epoch; returns (model, stats)."""
    train, val = data
    overrides = {k: kw.pop(k) for k in list(kw) if k in TrainParams.model_fields}
    rt = {k: kw.pop(k) for k in list(kw) if k in RuntimeParams.model_fields}
    params = TrainParams(**{"epochs": EPOCHS, "batch_size": 8, "lr": 5e-3, "warmup_frac": 0.2,
                            **overrides})
    runtime = RuntimeParams(**{"checkpoint_every_minutes": 0,
                               "checkpoint_dir": str(tmp_path / "ck"), **rt})
    model = _model(model_seed)
    stats = fit(model, make_loader(train, 8, shuffle=True, seed=1), survival_loss, params, runtime,
                val_loader=make_loader(val, 16), run_key=key, progress=False,
                live_dir=tmp_path / f"live-{key}" if live else None, **kw)
    return model, stats


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Boom(RuntimeError):
    pass


def _raise_at(target):
    def hook(i, *_):
        if i == target:
            raise Boom(f"killed at {i}")
    return hook


def test_resume_after_an_epoch_is_bit_identical(data, tmp_path):
    ref, ref_stats = _run(data, tmp_path, "ref", live=True)
    with pytest.raises(Boom):
        _run(data, tmp_path, "cut", live=True, on_epoch_end=_raise_at(1))  # after epoch 2
    model, stats = _run(data, tmp_path, "cut", model_seed=99, live=True)
    assert stats["resumed_from_step"] == 12 and stats["completed"]
    assert _same(model, ref)
    assert stats["history"] == ref_stats["history"] and len(stats["history"]) == EPOCHS
    for name in ("metrics.json", "plots/metrics/train_loss.tsv", "plots/metrics/val_loss.tsv",
                 "plots/metrics/lr.tsv"):  # the DVCLive files match too
        ref_text, cut_text = ((tmp_path / f"live-{k}" / name).read_text() for k in ("ref", "cut"))
        assert ref_text == cut_text
    assert len(ref_text.splitlines()) == EPOCHS + 1
    # a finished run is not trained again
    again, stats2 = _run(data, tmp_path, "cut", model_seed=7)
    assert _same(again, ref) and stats2["history"] == ref_stats["history"]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_mid_epoch_is_bit_identical(data, tmp_path, grad_accum):
    ref, ref_stats = _run(data, tmp_path, "ref", grad_accum=grad_accum)
    # pre-empted at step 5: mid-epoch for both accumulation settings
    _, part = _run(data, tmp_path, "steps", max_steps=5, grad_accum=grad_accum)
    assert not part["completed"] and part["steps"] == 5
    model, stats = _run(data, tmp_path, "steps", model_seed=3, grad_accum=grad_accum)
    assert stats["resumed_from_step"] == 5
    assert _same(model, ref) and stats["history"] == ref_stats["history"]
    # killed (no warning) at step 8 with a checkpoint every 3 steps: resumes from step 6
    with pytest.raises(Boom):
        _run(data, tmp_path, "kill", on_step=_raise_at(8), checkpoint_every_steps=3,
             grad_accum=grad_accum)
    model, stats = _run(data, tmp_path, "kill", model_seed=4, checkpoint_every_steps=3,
                        grad_accum=grad_accum)
    assert stats["resumed_from_step"] == 6
    assert _same(model, ref) and stats["history"] == ref_stats["history"]


def test_sigterm_checkpoints_then_stops(data, tmp_path):
    ref, ref_stats = _run(data, tmp_path, "ref")

    def term(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path, "term", on_step=term)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed again
    model, stats = _run(data, tmp_path, "term", model_seed=5)
    assert stats["resumed_from_step"] == 4
    assert _same(model, ref) and stats["history"] == ref_stats["history"]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(data, tmp_path):
    ref, ref_stats = _run(data, tmp_path, "ref")
    with pytest.raises(Boom):
        _run(data, tmp_path, "bad", on_epoch_end=_raise_at(2))  # checkpoints at epochs 2, 3
    run_dir = tmp_path / "ck" / "bad"
    older, latest = list_checkpoints(run_dir)
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match="SHA-256"):
        read_checkpoint(latest)
    path, ck = load_checkpoint(run_dir)
    assert path == older and ck["loop"]["epoch"] == 2
    assert not latest.exists()  # set aside as .corrupt-*, so it is not tried again
    # a checkpoint without its manifest (written by hand, or half-copied) is skipped too
    (run_dir / "999999-step000000099").mkdir()
    assert load_checkpoint(run_dir)[0] == older
    model, stats = _run(data, tmp_path, "bad", model_seed=6)
    assert stats["resumed_from_step"] == 12
    assert _same(model, ref) and stats["history"] == ref_stats["history"]


def test_early_stopping_restores_the_best_weights(data, tmp_path):
    scripted = iter([0.50, 0.70, 0.65, 0.69, 0.60, 0.9])  # best at epoch 2 (mode max)
    snapshots = []

    def val_fn(model, device):
        return {"val_auc": next(scripted)}

    def snap(epoch, record):
        snapshots.append({k: v.clone() for k, v in model_ref[0].state_dict().items()})

    model_ref = [None]
    train, val = data
    model = _model()
    model_ref[0] = model
    params = TrainParams(epochs=6, batch_size=8, patience=2, min_delta=0.01)
    stats = fit(model, make_loader(train, 8, shuffle=True), survival_loss, params,
                RuntimeParams(checkpoint_dir=str(tmp_path / "ck")),
                val_fn=val_fn, monitor="val_auc", mode="max", run_key="es",
                on_epoch_end=snap, progress=False)
    # 0.69 is not an improvement over 0.70 by min_delta: stop after epoch 4
    assert stats["stopped_early"] and stats["epochs"] == 4 and stats["best_epoch"] == 2
    assert stats["best_value"] == 0.70
    best = snapshots[1]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, snapshots[-1][k]) for k, v in model.state_dict().items())


def test_gradient_accumulation_matches_one_large_batch(data, tmp_path):
    train, _ = data
    loader8 = list(make_loader(train, 8))
    halves = [train[b.rows[i:i + 4].numpy()] for b in loader8 for i in (0, 4)]
    results = []
    for batches, accum in ((loader8, 1), (halves, 2)):
        torch.manual_seed(0)
        model = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=20, n_bins=3, embed_dim=8,
                                                    hidden_dim=8, dropout=0.0))
        fit(model, batches, survival_loss, TrainParams(epochs=2, grad_accum=accum, batch_size=8 // accum),
            checkpoint=False, progress=False)
        results.append(model.state_dict())
    for k, v in results[0].items():
        assert torch.allclose(v, results[1][k], atol=1e-5), k


def test_stats_schedule_and_dvclive_leave_dvc_yaml_alone(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    _, stats = _run(data, tmp_path, "stats", live=True, lr_scale_with_batch=True, grad_accum=2)
    assert (tmp_path / "dvc.yaml").read_text() == "stages: {}\n"
    assert not list((tmp_path / "live-stats").rglob("dvc.yaml"))
    assert (tmp_path / "live-stats" / "metrics.json").exists()
    assert stats["n_params"] == sum(p.numel() for p in _model().parameters())
    assert stats["device"] == "cpu" and stats["effective_batch_size"] == 16
    assert stats["lr_base"] == pytest.approx(5e-3 * 16 / 64)
    for key in ("peak_memory_mb", "patients_per_s", "tokens_per_s", "wall_time_s"):
        assert stats[key] > 0, key

    cos = LRSchedule("cosine", total_steps=100, warmup_steps=10)
    assert cos.factor(0) == pytest.approx(0.1) and cos.factor(9) == pytest.approx(1.0)
    assert cos.factor(55) == pytest.approx(0.5) and cos.factor(99) < 0.01
    assert LRSchedule("linear", 100, 0).factor(50) == pytest.approx(0.5)
    plateau = LRSchedule("plateau", 100, 0, mode="min", patience=1)
    for value in (1.0, 1.0, 1.0):
        plateau.epoch_end(value)
    assert plateau.factor(50) == 0.5


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(data, tmp_path):
    """runtime.compile: torch.compile (inductor, dynamic shapes; a C compiler and tens of seconds
    on a CPU, hence slow) follows the eager run's validation curve. Not bit-identical: the
    compiled dropout draws its masks from inductor's own RNG (measured: 0.25 % apart)."""
    _, s1 = _run(data, tmp_path, "eager")
    _, s2 = _run(data, tmp_path, "compiled", compile=True)
    l1 = np.array([h["val_loss"] for h in s1["history"]])
    l2 = np.array([h["val_loss"] for h in s2["history"]])
    np.testing.assert_allclose(l2, l1, rtol=0.01)
    assert l2[-1] < l2[0]                                   # and it learns


class _Wider(DiscreteTimeSurvivalLSTM):
    """The same model with one more parameter-bearing layer (an architecture change)."""

    def __init__(self, config):
        super().__init__(config)
        self.extra = torch.nn.Linear(8, 8)


def test_a_checkpoint_that_does_not_fit_is_never_loaded(data, tmp_path, caplog):
    """A checkpoint under the run's key written by another architecture (code outside the run
    key, a library update): a warning names it, the run starts afresh, nothing half-loads."""
    with pytest.raises(Boom):   # the old model's run, interrupted: checkpoints at epochs 1, 2
        _run(data, tmp_path, "k", on_epoch_end=_raise_at(1))
    old = list_checkpoints(tmp_path / "ck" / "k")
    assert len(old) == 2

    def wider(seed=0):
        torch.manual_seed(seed)
        return _Wider(LSTMConfig(vocab_size=20, n_bins=3, embed_dim=8, hidden_dim=8, layers=2,
                                 dropout=0.2))

    train, val = data
    params = TrainParams(epochs=EPOCHS, batch_size=8, lr=5e-3, warmup_frac=0.2)
    rt = RuntimeParams(checkpoint_every_minutes=0, checkpoint_dir=str(tmp_path / "ck"))
    results = []
    for key in ("k", "fresh"):
        model = wider()
        with caplog.at_level("WARNING", logger="ehrseq.train.loop"):
            stats = fit(model, make_loader(train, 8, shuffle=True, seed=1), survival_loss, params,
                        rt, val_loader=make_loader(val, 16), run_key=key, progress=False)
        results.append((model, stats))
    (model, stats), (ref, ref_stats) = results
    assert f"checkpoint {old[-1]} does not fit this model" in caplog.text
    assert "missing key(s) extra.bias, extra.weight" in caplog.text
    assert stats["resumed_from_step"] is None and stats["completed"]
    assert _same(model, ref) and stats["history"] == ref_stats["history"]   # as if fresh
    assert not any(p.exists() for p in old)   # the old run's checkpoints are gone


def test_incompatibility_names_shapes_and_optimizer_layout():
    from ehrseq.train.checkpoint import incompatibility

    a = _model()
    b = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=20, n_bins=3, embed_dim=8, hidden_dim=12,
                                            layers=2, dropout=0.2))
    opt_a = torch.optim.AdamW(a.parameters())
    opt_b = torch.optim.AdamW(b.parameters())
    ck = {"model": a.state_dict(), "optimizer": opt_a.state_dict()}
    assert incompatibility(a, opt_a, ck) is None
    assert "shape mismatch" in incompatibility(b, opt_b, ck)
    frozen = torch.optim.AdamW([p for n, p in a.named_parameters() if n != "head.bias"])
    assert "optimizer: parameter groups" in incompatibility(a, frozen, ck)
