"""Stage `train_survival`: the discrete-time survival LSTM, trained by the one training loop (one
run per learning rate of ``tune.lrs``, the best on the validation split kept) and scored on the
test split by the one evaluation module."""

import logging
from pathlib import Path

from ehrseq.data.tensors import make_loader
from ehrseq.evaluate.task import OUTCOMES, SEQUENCES, SurvivalTask, score_model, training_metrics
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.models.losses import bin_edges
from ehrseq.models.lstm_survival import DiscreteTimeSurvivalLSTM, lstm_config, survival_loss
from ehrseq.params import load_params
from ehrseq.plots import training_curves
from ehrseq.train import distributed
from ehrseq.train.loop import fingerprint, make_run_key, save_model
from ehrseq.train.mirror import CheckpointMirror
from ehrseq.train.tune import fit_best_lr, lr_grid, tune_metrics

MODEL_DIR = Path("models/train_survival")
PRED = Path("data/predictions/train_survival")
PLOTS = Path("plots/train_survival")
log = logging.getLogger("train_survival")


def main() -> None:
    params = load_params()
    task = SurvivalTask.load()
    edges = bin_edges(task.cuts)
    cfg = lstm_config(params.model, task.seqs.vocab_size, len(edges) - 1)
    train, val, test = (task.dataset(s) for s in ("train", "val", "test"))
    tp = params.train
    ddp = distributed.setup()
    loader = make_loader(train, tp.batch_size, shuffle=True, seed=tp.seed,
                         num_workers=tp.num_workers, rank=ddp.rank, world_size=ddp.world_size)
    key = make_run_key("train_survival", params.model, tp, ddp.world_size,
                       fingerprint(SEQUENCES, OUTCOMES))
    lrs = lr_grid(params.tune, tp.lr)   # each lr: same seed, fresh model; best on validation
    train_kw = dict(val_loader=make_loader(val, tp.batch_size), run_key=key,
                    checkpoint_root=tp.checkpoint_dir, wrap_model=distributed.wrap,
                    mirror=CheckpointMirror.from_dvc() if tp.mirror_checkpoints else None,
                    rank=ddp.rank, world_size=ddp.world_size)
    if not ddp.is_main:  # other ranks train; rank 0 alone writes outputs
        fit_best_lr(lambda: DiscreteTimeSurvivalLSTM(cfg), lrs, loader, survival_loss, tp,
                    **train_kw)
        distributed.teardown()
        return
    with atomic_outputs(MODEL_DIR, PRED, PLOTS) as (model_dir, pred_dir, plots_dir):
        tuned = fit_best_lr(lambda: DiscreteTimeSurvivalLSTM(cfg), lrs, loader, survival_loss,
                            tp, live_dir=plots_dir / "live", log=log.info, **train_kw)
        model, stats = tuned.model, tuned.stats
        distributed.teardown()
        save_model(model_dir, model, cfg, task.seqs.vocab)
        training_curves(stats["history"], plots_dir / "training_curves")
        metrics = score_model("lstm", model, make_loader(test, tp.batch_size), task,
                              params.evaluate, edges, pred_dir, plots_dir)
    metrics.update(training_metrics(
        "lstm", stats, params.evaluate.gpu_hourly_usd, size=params.model.size,
        world_size=ddp.world_size,
        checkpoint_bytes=(MODEL_DIR / "model.safetensors").stat().st_size))
    metrics.update(tune_metrics("lstm", tuned))
    write_json("metrics/train_survival.json", metrics)
    log.info("lstm (%s, %d params, lr %g of %s): test C-index %.3f [%.3f, %.3f] in %.0f s "
             "on %s", params.model.size, stats["n_params"], tuned.lr, lrs,
             metrics["lstm.c_harrell"], metrics["lstm.c_harrell_lo"], metrics["lstm.c_harrell_hi"],
             tuned.wall_time_s, stats["device_name"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
