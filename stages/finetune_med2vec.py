"""Stage `finetune_med2vec`: Med2Vec (+ survival head). The pre-trained Med2Vec code and visit
layers (models/train_med2vec), the mean of the visit vectors over every input visit, and the
discrete-time survival head, fine-tuned together on the survival task by the one training loop
and scored on the test split like every other model (docs/med2vec.md)."""

import logging
import time
from pathlib import Path

from ehrseq.data.tensors import make_loader
from ehrseq.evaluate.task import OUTCOMES, SEQUENCES, SurvivalTask, score_model, training_metrics
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.models.losses import bin_edges
from ehrseq.models.med2vec import (
    Med2VecConfig,
    Med2VecSurvival,
    Med2VecSurvivalDataset,
    survival_loss,
)
from ehrseq.params import load_params
from ehrseq.plots import training_curves
from ehrseq.train.loop import fingerprint, load_pretrained, make_run_key, save_model
from ehrseq.train.tune import fit_best_lr, lr_grid, tune_metrics

PRETRAINED = Path("models/train_med2vec")
OUT = [Path(f"{d}/finetune_med2vec") for d in ("models", "data/predictions", "plots")]
log = logging.getLogger("finetune_med2vec")


def main() -> None:
    params = load_params()
    fp = params.finetune
    tp = params.train.model_copy(update={"epochs": fp.epochs or params.train.epochs,
                                         "lr": fp.lr or params.train.lr})
    task = SurvivalTask.load()
    pretrained, pre_cfg = load_pretrained(PRETRAINED, "train_med2vec", task.seqs.vocab)
    edges = bin_edges(task.cuts)
    cfg = Med2VecConfig(**{**pre_cfg, "n_bins": len(edges) - 1, "dropout": params.model.dropout,
                           "model_class": "ehrseq.models.med2vec.Med2VecSurvival"})
    encoder_state = pretrained.state_dict()

    def build() -> Med2VecSurvival:
        model = Med2VecSurvival(cfg)
        model.encoder.load_state_dict(encoder_state)
        return model

    # every input visit (no max_visits): the mean is cheap and matches the embed stage's
    train, val, test = (Med2VecSurvivalDataset(task.dataset(s)) for s in ("train", "val", "test"))
    key = make_run_key("finetune_med2vec", cfg, tp, fingerprint(SEQUENCES, OUTCOMES, PRETRAINED))
    with atomic_outputs(*OUT) as (model_dir, pred_dir, plots_dir):
        t0 = time.monotonic()
        # one fresh model per lr of tune.lrs (same seed), the best on the validation split
        tuned = fit_best_lr(build, lr_grid(params.tune, tp.lr),
                            make_loader(train, tp.batch_size, shuffle=True, seed=tp.seed,
                                        num_workers=tp.num_workers),
                            survival_loss, tp, val_loader=make_loader(val, tp.batch_size),
                            run_key=key, checkpoint_root=tp.checkpoint_dir,
                            live_dir=plots_dir / "live", log=log.info)
        model, stats = tuned.model, tuned.stats
        save_model(model_dir, model, cfg, task.seqs.vocab)
        training_curves(stats["history"], plots_dir / "training_curves")
        metrics = score_model("med2vec", model, make_loader(test, tp.batch_size), task,
                              params.evaluate, edges, pred_dir, plots_dir)
        ckpt_bytes = (model_dir / "model.safetensors").stat().st_size
        seconds = time.monotonic() - t0
    metrics.update(training_metrics("med2vec", stats, params.evaluate.gpu_hourly_usd,
                                    size=cfg.size, checkpoint_bytes=ckpt_bytes,
                                    stage_seconds=seconds))
    metrics.update(tune_metrics("med2vec", tuned))
    write_json("metrics/finetune_med2vec.json", metrics)
    log.info("Med2Vec-%s + survival head (%d params, lr %g): test C-index %.3f [%.3f, %.3f] "
             "in %.0f s", cfg.size, stats["n_params_trainable"], tuned.lr,
             metrics["med2vec.c_harrell"], metrics["med2vec.c_harrell_lo"],
             metrics["med2vec.c_harrell_hi"], tuned.wall_time_s)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
