"""Stage `pretrain_behrt`: BEHRT pre-trained on the training patients' whole records by the one
recipe (checkpoints mirrored to the DVC remote: a lost pod resumes on a new one), with
``pretrain.objective``: masked and next-visit codes (``mlm``), MOTOR's time to the next
occurrence of frequent codes (``tte``), both, or ``auto`` (by the number of pre-training
patients); validated on the validation patients beside baselines that need no training
(docs/behrt.md); with ``pretrain.corpus``, its patients too. Test patients are never read."""

import logging
from dataclasses import replace

from ehrseq.data.folds import fold_arg, fold_stage, fold_stats, resplit
from ehrseq.data.task import SEQUENCES
from ehrseq.data.tensors import Sequences, set_value_codes
from ehrseq.io import run_stage
from ehrseq.models.behrt import behrt_config, value_inputs
from ehrseq.models.pretraining import (
    BEHRTPretrain,
    PretrainDataset,
    code_log_freq,
    evaluate_pretraining,
    init_tte_rates,
    lab_state_weight,
    pretrain_loader,
    pretrain_loss,
    pretraining_metrics,
    tte_edges,
    tte_task_codes,
)
from ehrseq.params import load_params
from ehrseq.train.recipe import train_stage


def main() -> None:
    params = load_params()
    pp = params.pretrain
    tp = params.train.model_copy(update={"epochs": pp.epochs or params.train.epochs})
    fold = fold_arg()   # --fold k: a cross-fitting fold's, none of its patients read
    seqs, train_idx, val_idx = Sequences.load_pretraining(SEQUENCES, resplit(fold, params))
    objective = pp.resolved_objective(len(train_idx))
    mlm, tte = objective != "tte", objective != "mlm"
    tasks = tte_task_codes(seqs, train_idx, pp.tte_codes) if tte else None
    edges = tte_edges(pp.tte_pieces)
    cfg = behrt_config(params.model, seqs.vocab_size,
                       model_class="ehrseq.models.pretraining.BEHRTPretrain",
                       **value_inputs(params.model, seqs))
    lab_w = lab_state_weight(pp, seqs, len(train_idx))
    cfg = replace(cfg, lab_codes=len(seqs.value_stats["codes"]) if lab_w else 0,
                  **({"tte_tasks": len(tasks), "tte_pieces": len(edges) - 1} if tte else {}))
    log_freq = code_log_freq(seqs, train_idx)
    mask_prob = pp.mask_prob if mlm else 0.0
    train = PretrainDataset(seqs, train_idx, cfg.max_len, mask_prob, seed=tp.seed, tte_tasks=tasks)
    val = PretrainDataset(seqs, val_idx, cfg.max_len, mask_prob, seed=tp.seed + 1,
                          last_visit=True, tte_tasks=tasks)
    val_loader = pretrain_loader(val, tp.batch_size, num_workers=params.runtime.num_workers)
    weights = {"mlm_weight": pp.mlm_weight if mlm else 0.0,
               "next_visit_weight": pp.next_visit_weight if mlm else 0.0,
               "tte_weight": pp.tte_weight if tte else 0.0, "edges": edges,
               "lab_state_weight": lab_w}

    def build() -> BEHRTPretrain:
        model = set_value_codes(BEHRTPretrain(cfg), seqs)
        if tte:   # MOTOR: the biases start at the training split's log event rates
            init_tte_rates(model.tte, train, edges)
        return model

    def val_fn(m, device):
        res = evaluate_pretraining(m, val_loader, log_freq, device, **weights)
        out = {"val_loss": res["loss"]}
        if mlm:
            out |= {"val_mlm_accuracy": res["mlm_accuracy"],
                    "val_next_visit_recall_at_10": res["next_visit_recall_at_10"]}
        if tte:
            out["val_tte_nll"] = res["tte_nll"]
        if cfg.lab_codes:
            out["val_lab_state_mse"] = res["lab_state_mse"]
        return out

    def finish(model, out) -> dict:
        dev = next(model.parameters()).device
        return pretraining_metrics(evaluate_pretraining(model, val_loader, log_freq, dev,
                                                        **weights), mlm, len(tasks) if tte else 0)

    train_stage(
        fold_stage("pretrain_behrt", fold), "behrt", params=params, train=tp, build=build,
        loss_fn=lambda m, b: pretrain_loss(m, b, **weights), train_data=train,
        loader=pretrain_loader, val_fn=val_fn, monitor="val_loss", lrs=[tp.lr],
        inputs=(SEQUENCES,), key=(cfg, pp), config=cfg, vocab=seqs.vocab, finish=finish,
        extra_stats={"train_patients": len(train_idx), "val_patients": len(val_idx),
                     "corpus_patients": int((seqs.patients["split"] == "corpus").sum()),
                     "objective": objective, "lab_state_weight": lab_w,
                     **fold_stats(fold, params)})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
