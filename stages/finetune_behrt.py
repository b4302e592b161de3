"""Stage `finetune_behrt@<mode>`: BEHRT with the discrete-time survival head on the landmark
inputs of the survival task, trained by the one recipe.

Usage: ``python stages/finetune_behrt.py {full,lora,probe,scratch}``. ``full``, ``lora`` and
``probe`` start from models/pretrain_behrt (whose architecture, time and value inputs they
keep: params.yaml must agree); ``scratch`` from random weights of the architecture params.yaml
sets (the pre-trained model's while params are unchanged). ``lora`` saves only the adapters
and the head (adapter.safetensors) and predicts with them merged into the base weights. Every
mode trains once per learning rate of ``tune.lrs`` (same seed, fresh model) and keeps the best
on the validation split. Writes the model, its test predictions and run statistics; the
``evaluate`` stage scores them.
``--labelled N --replicate R``: a learning-curve point (stage ``curve_behrt``; pre-training
keeps every training patient, docs/learning_curves.md).
"""

import argparse
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

from ehrseq.data.task import OUTCOMES, SEQUENCES, curve_run
from ehrseq.data.tensors import make_loader, set_value_codes
from ehrseq.io import run_stage
from ehrseq.models.behrt import (
    BEHRTConfig,
    BEHRTDataset,
    behrt_config,
    check_pretrained,
    finetune_model,
    save_adapter,
    survival_loss,
    value_inputs,
)
from ehrseq.models.store import load_pretrained, save_model
from ehrseq.params import FINETUNE_MODES, load_params
from ehrseq.survival.bins import bin_edges
from ehrseq.train.recipe import finetune_lrs, skip_stage, survival_predictions, train_stage


def main(mode: str) -> None:
    params = load_params()
    fp = params.finetune
    tp = params.train.model_copy(update={"epochs": fp.epochs or params.train.epochs,
                                         "lr": fp.lr or params.train.lr})
    run = curve_run(f"finetune_behrt/{mode}")  # a learning-curve point, or the main run
    if run.skip:
        return skip_stage(run.stage, run.skip, run.stats)
    task, base = run.task, run.pretrained("pretrain_behrt")   # a fold's own, or the main one
    n_bins = len(bin_edges(task.cuts)) - 1
    if mode == "scratch":   # random weights of the architecture params.yaml sets
        cfg, encoder_state = behrt_config(params.model, task.seqs.vocab_size, n_bins,
                                          **value_inputs(params.model, task.seqs)), None
    else:
        pretrained, pre_cfg = load_pretrained(base, "pretrain_behrt")
        cfg = BEHRTConfig(**{**pre_cfg, "n_bins": n_bins,
                             "model_class": "ehrseq.models.behrt.BEHRTSurvival"})
        check_pretrained(cfg, params.model, task.seqs, base)
        encoder_state = pretrained.encoder.state_dict()
    cfg = replace(cfg, readout=fp.readout)   # what the head reads: a fine-tuning choice
    train, val, test = (BEHRTDataset(task.dataset(s), cfg.max_len)
                        for s in ("train", "val", "test"))
    name = f"behrt_{mode}"
    holder = {}

    def save(model, model_dir: Path) -> None:
        if mode != "lora":
            save_model(model_dir, model, cfg, task.seqs.vocab)
            holder["model"] = model
            return
        # the adapters and head alone; the base is models/pretrain_behrt
        model_dir.mkdir()
        save_adapter(model, model_dir / "adapter.safetensors")
        (model_dir / "adapter_config.json").write_text(json.dumps(
            {**model.peft_config["default"].to_dict(), "base_model": str(base)},
            indent=2, default=sorted) + "\n")
        (model_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        (model_dir / "vocab.json").write_text(json.dumps(task.seqs.vocab))
        holder["model"] = model.merge_and_unload()  # predict with plain merged weights

    train_stage(
        run.stage, name, params=params, train=tp,
        build=lambda: set_value_codes(finetune_model(mode, cfg, encoder_state, fp, train.base),
                                      task.seqs),
        loss_fn=survival_loss, lrs=finetune_lrs(params, tp.lr) if mode == "full" else None,
        train_data=train, val_data=val, key=(mode, cfg, fp), save=save, predictions=True,
        inputs=(SEQUENCES, OUTCOMES) + (() if mode == "scratch" else (base,)),  # scratch: no base
        extra_stats={"mode": mode, **run.stats},
        finish=lambda _, out: survival_predictions(
            name, holder["model"], task, make_loader(test, tp.batch_size), out.predictions))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=FINETUNE_MODES)
    parser.add_argument("--labelled", type=int, default=None)   # read by curve_point
    parser.add_argument("--replicate", type=int, default=0)
    parser.add_argument("--fold", type=int, default=None)   # read by curve_run
    run_stage(lambda: main(parser.parse_args().mode))
