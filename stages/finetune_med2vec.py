"""Stage `finetune_med2vec`: Med2Vec (+ survival head). The pre-trained Med2Vec code and visit
layers (models/train_med2vec), the mean of the visit vectors over every input visit, and the
discrete-time survival head, fine-tuned together on the survival task by the one recipe
(docs/med2vec.md). Writes the model, its test predictions and run statistics; the
``evaluate`` stage scores them. ``--labelled N --replicate R``: a learning-curve point (stage
``curve_med2vec``; pre-training keeps every training patient, docs/learning_curves.md)."""

import logging

from ehrseq.data.task import OUTCOMES, SEQUENCES, curve_run
from ehrseq.data.tensors import make_loader
from ehrseq.io import run_stage
from ehrseq.models.losses import init_hazard_head
from ehrseq.models.med2vec import (
    Med2VecConfig,
    Med2VecSurvival,
    Med2VecSurvivalDataset,
    survival_loss,
)
from ehrseq.models.store import load_pretrained
from ehrseq.params import load_params
from ehrseq.survival.bins import bin_edges
from ehrseq.train.recipe import finetune_lrs, skip_stage, survival_predictions, train_stage


def main() -> None:
    params = load_params()
    fp = params.finetune
    tp = params.train.model_copy(update={"epochs": fp.epochs or params.train.epochs,
                                         "lr": fp.lr or params.train.lr})
    run = curve_run("finetune_med2vec")      # a learning-curve point, or the main run
    if run.skip:
        return skip_stage(run.stage, run.skip, run.stats)
    task, base = run.task, run.pretrained("train_med2vec")   # a fold's own, or the main one
    pretrained, pre_cfg = load_pretrained(base, "train_med2vec", task.seqs.vocab)
    cfg = Med2VecConfig(**{**pre_cfg, "n_bins": len(bin_edges(task.cuts)) - 1,
                           "dropout": params.model.dropout,
                           "model_class": "ehrseq.models.med2vec.Med2VecSurvival"})
    encoder_state = pretrained.state_dict()

    # every input visit (no max_visits): the mean is cheap and matches the embed stage's
    train, val, test = (Med2VecSurvivalDataset(task.dataset(s)) for s in ("train", "val", "test"))

    def build() -> Med2VecSurvival:
        model = Med2VecSurvival(cfg)
        model.encoder.load_state_dict(encoder_state)
        init_hazard_head(model.head, train.base)   # the training split's baseline model
        model.lr_scales = {"head.": fp.head_lr_scale}   # a new head on a pre-trained encoder
        return model

    train_stage(
        run.stage, "med2vec", params=params, train=tp, build=build,
        loss_fn=survival_loss, train_data=train, val_data=val, lrs=finetune_lrs(params, tp.lr),
        inputs=(SEQUENCES, OUTCOMES, base), key=(cfg,), config=cfg, vocab=task.seqs.vocab,
        predictions=True, extra_stats=run.stats,
        finish=lambda model, out: survival_predictions(
            "med2vec", model, task, make_loader(test, tp.batch_size), out.predictions))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
