"""Stage `train_survival`: the discrete-time survival LSTM, trained by the one recipe (one run
per learning rate of ``tune.lrs``, the best on the validation split kept) with the LSTM's own
weight decay (``model.lstm.weight_decay``). Writes the model, its test predictions and run
statistics; the ``evaluate`` stage scores them.

``--labelled N --replicate R``: a learning-curve point (stage ``curve_lstm``), trained on N
labelled training patients (docs/learning_curves.md)."""

import logging

from ehrseq.data.task import OUTCOMES, SEQUENCES, curve_run
from ehrseq.data.tensors import make_loader, set_value_codes, uses_values
from ehrseq.io import run_stage
from ehrseq.models.losses import init_hazard_head
from ehrseq.models.lstm_survival import (
    DiscreteTimeSurvivalLSTM,
    lstm_config,
    lstm_train,
    survival_loss,
)
from ehrseq.params import load_params
from ehrseq.survival.bins import bin_edges
from ehrseq.train.recipe import skip_stage, survival_predictions, train_stage


def main() -> None:
    params = load_params()
    run = curve_run("train_survival")        # a learning-curve point, or the main run
    if run.skip:
        return skip_stage(run.stage, run.skip, run.stats)
    task = run.task
    lp = params.model.lstm
    cfg = lstm_config(params.model, task.seqs.vocab_size, len(bin_edges(task.cuts)) - 1,
                      values=uses_values(lp.values, task.seqs, "model.lstm.values"),
                      value_deltas=uses_values(lp.value_deltas, task.seqs,
                                               "model.lstm.value_deltas"))
    train, test = task.dataset("train"), task.dataset("test")

    def build() -> DiscreteTimeSurvivalLSTM:
        model = DiscreteTimeSurvivalLSTM(cfg)
        set_value_codes(model, task.seqs)
        init_hazard_head(model.head, train)   # the training split's baseline model
        return model

    train_stage(
        run.stage, "lstm", params=params, train=lstm_train(params), build=build,
        loss_fn=survival_loss, train_data=train, val_data=task.dataset("val"),
        inputs=(SEQUENCES, OUTCOMES), key=(params.model,), config=cfg, vocab=task.seqs.vocab,
        predictions=True, extra_stats=run.stats,
        finish=lambda model, out: survival_predictions(
            "lstm", model, task, make_loader(test, params.train.batch_size), out.predictions))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
