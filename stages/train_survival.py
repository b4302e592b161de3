"""Stage `train_survival`: the discrete-time survival LSTM, trained by the one recipe (one run
per learning rate of ``tune.lrs``, the best on the validation split kept). Writes the model,
its test predictions and run statistics; the ``evaluate`` stage scores them.

``--labelled N --replicate R``: a learning-curve point (stage ``curve_lstm``), trained on N
labelled training patients (docs/learning_curves.md)."""

import logging

from ehrseq.data.task import (
    OUTCOMES,
    SEQUENCES,
    curve_point,
    curve_stats,
    load_task,
    stage_name,
    subset_problem,
)
from ehrseq.data.tensors import make_loader
from ehrseq.io import run_stage
from ehrseq.models.lstm_survival import DiscreteTimeSurvivalLSTM, lstm_config, survival_loss
from ehrseq.params import load_params
from ehrseq.survival.bins import bin_edges
from ehrseq.train.recipe import skip_stage, survival_predictions, train_stage


def main() -> None:
    params = load_params()
    labelled, replicate = curve_point()      # a learning-curve point, or the main run
    task = load_task(labelled, replicate)
    stage = stage_name("train_survival", labelled, replicate)
    why = labelled and subset_problem(task)
    if why:
        return skip_stage(stage, why, curve_stats(task, labelled, replicate))
    cfg = lstm_config(params.model, task.seqs.vocab_size, len(bin_edges(task.cuts)) - 1)
    test = task.dataset("test")
    train_stage(
        stage, "lstm", params=params, build=lambda: DiscreteTimeSurvivalLSTM(cfg),
        loss_fn=survival_loss, train_data=task.dataset("train"), val_data=task.dataset("val"),
        inputs=(SEQUENCES, OUTCOMES), key=(params.model,), config=cfg, vocab=task.seqs.vocab,
        predictions=True, extra_stats=curve_stats(task, labelled, replicate),
        finish=lambda model, out: survival_predictions(
            "lstm", model, task, make_loader(test, params.train.batch_size), out.predictions))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
