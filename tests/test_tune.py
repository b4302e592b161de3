"""Equal tuning (src/ehrseq/train/tune.py): one learning-rate grid for every neural model,
chosen on the validation split alone, one checkpoint run key per lr, the choice in the metrics."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import script

from ehrseq.data.tensors import SequenceDataset, make_loader, toy_sequences
from ehrseq.models.inference import evaluate_loss
from ehrseq.models.lstm_survival import DiscreteTimeSurvivalLSTM, LSTMConfig, survival_loss
from ehrseq.params import ParamsError, TrainParams, TuneParams, parse_params
from ehrseq.train.tune import fit_best_lr, lr_grid, lr_run_key, tune_metrics

ROOT = Path(__file__).resolve().parents[1]
CUTS = [30, 90, 180, 365]
# The tuner's tests need a model whose learning curves they know (e.g. "0.5 leads after 1
# epoch, 0.05 after 3"): the LSTM as it was when they were written (mean pooling, gap and age
# only, cosine schedule), not whatever the defaults are today.
CFG = LSTMConfig(vocab_size=40, n_bins=len(CUTS), embed_dim=8, hidden_dim=8, layers=1,
                 dropout=0.0, pool="mean", time="gap")
TP = TrainParams(epochs=3, batch_size=16, warmup_frac=0.0, patience=5, schedule="cosine")
GOOD, BAD = 3e-2, 1e-6   # BAD barely moves the initial weights in 3 epochs
FT_GOOD, FT_BAD = 2e-2, 2e-6   # the grid of fine-tuning a pre-trained encoder whole

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(torch.utils.data.Dataset):
    """A dataset that records which patients were read."""

    def __init__(self, base: SequenceDataset, seen: set):
        self.base, self.seen, self.lengths = base, seen, base.lengths

    def __len__(self):
        return len(self.base)

    def __getitem__(self, rows):
        self.seen.update(self.base.index[np.asarray(rows)].tolist())
        return self.base[rows]


@pytest.fixture(scope="module")
def cohort():
    s = toy_sequences(150, vocab_size=CFG.vocab_size, seed=0)
    rng = np.random.default_rng(0)
    dur, ev = rng.exponential(200, 150), rng.integers(0, 2, 150)
    split = np.array(["train"] * 90 + ["val"] * 30 + ["test"] * 30)

    def ds(name):
        r = np.flatnonzero(split == name)
        return SequenceDataset(s, r, s.n_visits[r], dur[r], ev[r], cuts=CUTS)

    return {name: ds(name) for name in ("train", "val", "test")}


def build():
    return DiscreteTimeSurvivalLSTM(CFG)


def tune(cohort, lrs, seen=None, **kw):
    seen = set() if seen is None else seen
    kw = {"checkpoint": False, **kw}
    return fit_best_lr(build, lrs, make_loader(Recorder(cohort["train"], seen), 16,
                                               shuffle=True),
                       survival_loss, TP, val_loader=make_loader(Recorder(cohort["val"], seen),
                                                                 64),
                       run_key="k", progress=False, handle_sigterm=False, **kw)


def test_picks_the_lowest_validation_loss_and_never_reads_test(cohort):
    seen: set = set()
    res = tune(cohort, [BAD, GOOD, 1.0], seen)
    assert set(res.val_losses) == {BAD, GOOD, 1.0}
    assert res.lr == min(res.val_losses, key=res.val_losses.get)
    assert res.lr != BAD and res.val_losses[BAD] > res.val_losses[res.lr] + 0.1
    assert res.stats["lr_base"] == res.lr and res.stats["monitor"] == "val_loss"
    # the kept model is the chosen lr's best epoch, scored on validation
    val = make_loader(cohort["val"], 64)
    assert evaluate_loss(res.model, val, survival_loss) == pytest.approx(res.val_losses[res.lr],
                                                                         rel=1e-5)
    assert res.wall_time_s > 0
    test = set(cohort["test"].index.tolist())
    assert seen and not seen & test                          # never a test patient
    assert set(cohort["val"].index.tolist()) <= seen         # the choice saw validation

    again = tune(cohort, [GOOD, BAD])   # the order of the grid does not matter
    assert again.lr == GOOD and again.val_losses[GOOD] == res.val_losses[GOOD]
    with pytest.raises(ValueError, match="validation"):   # choosing needs validation
        fit_best_lr(build, [GOOD, BAD], make_loader(cohort["train"], 16), survival_loss, TP,
                    val_loader=None, run_key="k")
    with pytest.raises(ValueError, match="repeated"):
        tune(cohort, [GOOD, GOOD])


def test_same_seed_same_initial_weights_for_every_lr(cohort):
    starts = []

    def recording_build():
        m = build()
        starts.append({k: v.clone() for k, v in m.state_dict().items()})
        return m

    fit_best_lr(recording_build, [BAD, GOOD], make_loader(cohort["train"], 16, shuffle=True),
                survival_loss, TP.model_copy(update={"epochs": 1}),
                val_loader=make_loader(cohort["val"], 64), run_key="k", checkpoint=False,
                progress=False, handle_sigterm=False)
    assert len(starts) == 2
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


def test_each_lr_has_its_own_run_key_and_resumes(cohort, tmp_path):
    lrs = [BAD, GOOD]
    keys = [lr_run_key("k", lr) for lr in lrs]
    assert len(set(keys)) == 2 and "k" not in keys

    ref = tune(cohort, lrs, checkpoint=True, checkpoint_root=tmp_path / "ref")
    assert sorted(f"k/{p.name}" for p in (tmp_path / "ref/k").iterdir()) == sorted(keys)

    root = tmp_path / "cut"   # every lr interrupted after 4 steps, then resumed
    cut = tune(cohort, lrs, checkpoint=True, checkpoint_root=root, max_steps=4)
    assert not cut.stats["completed"]
    assert sorted(f"k/{p.name}" for p in (root / "k").iterdir()) == sorted(keys)
    res = tune(cohort, lrs, checkpoint=True, checkpoint_root=root)
    assert res.stats["resumed_from_step"] == 4 and res.stats["completed"]
    assert res.lr == ref.lr and res.val_losses == ref.val_losses
    ref_w, res_w = ref.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)

    done = tune(cohort, lrs, checkpoint=True, checkpoint_root=root)   # finished: no training
    assert done.lr == ref.lr and done.val_losses == ref.val_losses


def test_metrics_record_the_chosen_lr_and_every_loss(cohort):
    res = tune(cohort, [BAD, GOOD])
    m = tune_metrics("lstm", res)
    assert m["lstm.tuned_lr"] == GOOD and m["lstm.tune.n_lrs"] == 2
    assert m["lstm.tune.lr_0.03.val_loss"] == res.val_losses[GOOD]
    assert m["lstm.tune.lr_1e-06.val_loss"] == res.val_losses[BAD]
    assert m["lstm.tune.wall_time_s"] == res.wall_time_s
    res.val_losses[BAD] = math.inf   # an lr that never gave a finite loss: null in JSON
    assert tune_metrics("x", res)["x.tune.lr_1e-06.val_loss"] is None


class Boom(Exception):
    pass


def test_a_race_keeps_the_same_model_and_survives_an_interruption(cohort, tmp_path):
    """tune.race_epochs: every lr trains 1 of its 3 epochs, only the lowest trains on. The kept
    lr and model are those of the full tuning (bit-identical: the winner resumes from its
    checkpoint); the loser stops at the cut; a run killed after the cut resumes the same."""
    lrs = [BAD, GOOD]
    ref = tune(cohort, lrs, checkpoint=True, checkpoint_root=tmp_path / "ref")
    raced = tune(cohort, lrs, checkpoint=True, checkpoint_root=tmp_path / "race",
                 race_epochs=1)
    per_epoch = math.ceil(90 / 16)
    assert raced.lr == ref.lr == GOOD and raced.epochs == {BAD: 1, GOOD: 3}
    assert raced.stats["resumed_from_step"] == per_epoch      # trained on from the cut
    ref_w, race_w = ref.model.state_dict(), raced.model.state_dict()
    assert all(torch.equal(ref_w[k], race_w[k]) for k in ref_w)
    assert raced.val_losses[GOOD] == ref.val_losses[GOOD]
    assert raced.val_losses[BAD] >= ref.val_losses[BAD]       # its best of 1 epoch, not 3
    assert raced.stats["history"] == ref.stats["history"]
    m = tune_metrics("lstm", raced)
    assert m["lstm.tune.lr_1e-06.epochs"] == 1 and m["lstm.tune.lr_0.03.epochs"] == 3

    no_ckpt = tune(cohort, lrs, race_epochs=1)   # no checkpoint: the winner trains again
    assert no_ckpt.lr == GOOD
    assert all(torch.equal(ref_w[k], no_ckpt.model.state_dict()[k]) for k in ref_w)

    def boom(step):   # only the winner's second round reaches step 2 epochs + 2
        if step == 2 * per_epoch + 2:
            raise Boom

    root = tmp_path / "killed"
    with pytest.raises(Boom):
        tune(cohort, lrs, checkpoint=True, checkpoint_root=root, race_epochs=1, on_step=boom)
    again = tune(cohort, lrs, checkpoint=True, checkpoint_root=root, race_epochs=1)
    assert again.lr == GOOD and again.epochs == {BAD: 1, GOOD: 3}
    assert again.stats["resumed_from_step"] == 2 * per_epoch  # its last epoch's checkpoint
    assert all(torch.equal(ref_w[k], again.model.state_dict()[k]) for k in ref_w)

    # checkpoints further on than the cut (here: a full tuning's finished runs) do not change
    # the choice: it is the best of the first race epochs, as a fresh race sees them. 0.5
    # leads after 1 epoch and 0.05 after 3
    early, late = 0.5, 0.05
    assert tune(cohort, [late, early], checkpoint=True, checkpoint_root=tmp_path / "f").lr == late
    fresh = tune(cohort, [late, early], checkpoint=True, checkpoint_root=tmp_path / "r",
                 race_epochs=1)
    reused = tune(cohort, [late, early], checkpoint=True, checkpoint_root=tmp_path / "f",
                  race_epochs=1)
    assert fresh.lr == reused.lr == early
    assert all(torch.equal(v, reused.model.state_dict()[k])
               for k, v in fresh.model.state_dict().items())

    full = tune(cohort, lrs, race_epochs=3)      # a race as long as training: no race
    assert full.epochs == ref.epochs and full.val_losses == ref.val_losses
    with pytest.raises(ValueError, match="race_epochs"):
        tune(cohort, lrs, race_epochs=0)


def test_params():
    assert TuneParams().lrs == [0.001, 0.003] and TuneParams().race_epochs == 4
    assert parse_params({"tune": {"race_epochs": None}}).tune.race_epochs is None
    with pytest.raises(ParamsError, match="tune.race_epochs"):
        parse_params({"tune": {"race_epochs": 0}})
    assert lr_grid(TuneParams(), 0.01) == [0.001, 0.003]
    for off in (None, []):
        p = parse_params({"tune": {"lrs": off}})
        assert p.tune.lrs is None and lr_grid(p.tune, 0.01) == [0.01]
    assert parse_params({"tune": {"lrs": [0.01, 0.001]}}).tune.lrs == [0.001, 0.01]
    for bad in ([0.001, 0.001], [0.0], [2.0]):
        with pytest.raises(ParamsError, match="tune.lrs"):
            parse_params({"tune": {"lrs": bad}})
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("train_survival", "finetune_behrt", "finetune_med2vec"):
        spec = dvc[stage].get("do", dvc[stage])
        assert "tune" in spec["params"], stage
        listing = f"stage-code/{Path(spec['cmd'].split()[1]).stem}.md5"
        assert listing in spec["deps"], stage
        assert "src/ehrseq/train/tune.py" in (ROOT / listing).read_text(), stage


# --------------------------------------------------------------------------- the stage

def toy_workspace(root: Path, n: int = 90) -> None:
    s = toy_sequences(n, vocab_size=30, max_visits=6, max_codes=4, seed=1)
    rng = np.random.default_rng(1)
    s.patients["birth_date"] = pd.Timestamp("1960-01-01") + pd.to_timedelta(
        rng.integers(0, 15_000, n), unit="D")
    s.patients["gender"] = rng.choice(["M", "F"], n)
    s.save(root / "data/processed/sequences")
    out = root / "data/processed/outcomes"
    out.mkdir(parents=True)
    split = np.array(["train", "val", "test"])[np.arange(n) % 3]
    pd.DataFrame({"patient": s.patients["patient"], "index": np.arange(n),
                  "split": split, "landmark_visits": s.n_visits,
                  "input_visits": s.n_visits, "landmark_time": 18_000.0,
                  "duration": rng.exponential(200, n), "event": rng.integers(0, 2, n),
                  }).to_parquet(out / "outcomes.parquet", index=False)
    (out / "time_bins.json").write_text(json.dumps({"cuts": [0, 30, 90, 180, 365, 730],
                                                       "horizons": [30, 90, 365]}))
    (root / "params.yaml").write_text(yaml.safe_dump({
        "model": {"lstm": {"embed_dim": 8, "hidden_dim": 8}},
        "train": {"epochs": 2, "batch_size": 16},
        "runtime": {"threads": 1, "device": "cpu", "mirror_checkpoints": False},
        "outcome": {"history": {"max_tokens": 63}},   # BEHRT's max_len 64 holds it
        "tune": {"lrs": [BAD, GOOD], "finetune_lrs": [FT_BAD, FT_GOOD]}}))


def pretrained_models(root: Path, vocab_size: int, vocab: dict) -> None:
    from ehrseq.models.behrt import BEHRTConfig
    from ehrseq.models.med2vec import Med2Vec, Med2VecConfig
    from ehrseq.models.pretraining import BEHRTPretrain
    from ehrseq.models.store import save_model

    torch.manual_seed(0)
    b = BEHRTConfig(vocab_size=vocab_size, hidden=16, layers=1, heads=2, intermediate=32,
                    max_len=64, model_class="ehrseq.models.pretraining.BEHRTPretrain")
    save_model(root / "models/pretrain_behrt", BEHRTPretrain(b), b, vocab)
    m = Med2VecConfig(vocab_size=vocab_size, code_dim=8, visit_dim=8)
    save_model(root / "models/train_med2vec", Med2Vec(m), m, vocab)


@pytest.mark.parametrize("stage_name, args, name", [
    ("train_survival", (), "lstm"),
    ("finetune_behrt", ("lora",), "behrt_lora"),
    ("finetune_behrt", ("probe",), "behrt_probe"),
    ("finetune_med2vec", (), "med2vec"),
])
def test_stage_records_the_tuning(stage_name, args, name, tmp_path, monkeypatch):
    """Each tuned stage trains one run per lr and writes the choice into its metrics."""
    toy_workspace(tmp_path)
    from ehrseq.data.tensors import Sequences

    seqs = Sequences.load(tmp_path / "data/processed/sequences")
    pretrained_models(tmp_path, seqs.vocab_size, seqs.vocab)
    monkeypatch.chdir(tmp_path)
    stage = script(f"stages/{stage_name}.py")
    stage.main(*args)
    out = "/".join((stage_name, *args))
    m = json.loads((tmp_path / f"metrics/{out}.json").read_text())
    grid = (FT_BAD, FT_GOOD) if stage_name == "finetune_med2vec" else (BAD, GOOD)   # own grid
    losses = {lr: m[f"{name}.tune.lr_{lr:g}.val_loss"] for lr in grid}
    assert m[f"{name}.tuned_lr"] == min(losses, key=losses.get)
    assert m[f"{name}.best_val_loss"] == losses[m[f"{name}.tuned_lr"]]
    assert m[f"{name}.tune.n_lrs"] == 2 and f"{name}.c_harrell" not in m   # evaluate scores
    pred = tmp_path / f"data/predictions/{out}"
    side = json.loads((pred / f"{name}.json").read_text())
    assert side["tuned_lr"] == m[f"{name}.tuned_lr"] and side["stage"] == out
    z = np.load(pred / f"{name}.npz")
    assert z["surv"].shape == (len(z["index"]), len(z["times"])) and len(z["index"]) > 0
    (run,) = (tmp_path / "checkpoints" / out).iterdir()   # one run of the stage ...
    labels = {f"lr_{lr:g}" for lr in grid}
    assert {p.name for p in run.iterdir() if p.is_dir()} == labels   # ... per lr
    assert {p.name for p in (tmp_path / f"plots/{out}/live").iterdir()} == labels


def test_race_replay_of_recorded_curves(tmp_path):
    """docs/tools/tune_race.py: a race that cuts too early keeps the lr that started fast."""
    import sys

    sys.path.insert(0, str(ROOT / "docs" / "tools"))
    from tune_race import replay, tuned_curves

    slow = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]          # better in the end
    fast = [0.8, 0.75, 0.85, 0.9, 0.95, 1.0, 1.1, 1.2, 1.3]   # better at first, stops at 7
    for root in ("a", "b"):   # the same run in two roots counts once
        for lr, curve in (("0.001", slow), ("0.003", fast)):
            d = tmp_path / root / f"plots/stage/live/lr_{lr}/plots/metrics"
            d.mkdir(parents=True)
            (d / "val_loss.tsv").write_text("step\tval_loss\n" + "".join(
                f"{i}\t{v}\n" for i, v in enumerate(curve)))
    runs = tuned_curves([tmp_path / "a", tmp_path / "b"])
    assert list(runs.values()) == [[slow, fast]]
    assert replay([slow, fast], 1, 5) == (False, 1 + 7, 8 + 7, pytest.approx(0.75 - 0.3))
    assert replay([slow, fast], 4, 5) == (True, 8 + 4, 8 + 7, 0.0)


@pytest.mark.parametrize("mode", ["scratch", "full", "probe"])
def test_finetune_behrt_readout_and_scratch_needs_no_pretrained_model(mode, tmp_path,
                                                                      monkeypatch):
    """finetune.readout cls_landmark reaches the model in every mode (its head reads twice the
    hidden size: [CLS] and the landmark visit's mean state; saved in config.json); ``scratch``
    trains with no models/pretrain_behrt at all (it never reads it, and its run key no longer
    fingerprints it), the pre-trained modes start from it."""
    toy_workspace(tmp_path)
    from ehrseq.data.tensors import Sequences

    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["finetune"] = {"readout": "cls_landmark"}
    p["tune"]["lrs"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    seqs = Sequences.load(tmp_path / "data/processed/sequences")
    if mode != "scratch":
        pretrained_models(tmp_path, seqs.vocab_size, seqs.vocab)
    monkeypatch.chdir(tmp_path)
    script("stages/finetune_behrt.py").main(mode)
    cfg = json.loads((tmp_path / f"models/finetune_behrt/{mode}/config.json").read_text())
    assert cfg["readout"] == "cls_landmark"
    from safetensors.torch import load_file

    (w,) = (tmp_path / f"models/finetune_behrt/{mode}").glob("*.safetensors")
    assert load_file(str(w))["head.weight"].shape[1] == 2 * cfg["hidden"]
    assert (tmp_path / "models/pretrain_behrt").exists() == (mode != "scratch")
    z = np.load(tmp_path / f"data/predictions/finetune_behrt/{mode}/behrt_{mode}.npz")
    assert np.isfinite(z["surv"]).all() and len(z["index"]) > 0
