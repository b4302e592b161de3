"""Stage `finetune_behrt@<mode>`: BEHRT with the discrete-time survival head on the landmark
inputs of the survival task, scored on the test split like every other model.

Usage: ``python stages/finetune_behrt.py {full,lora,probe,scratch}``. ``full``, ``lora`` and
``probe`` start from models/pretrain_behrt; ``scratch`` from random weights of the same
architecture. ``lora`` saves only the adapters and the head (adapter.safetensors) and predicts
with them merged into the base weights. Every mode trains once per learning rate of
``tune.lrs`` (same seed, fresh model) and keeps the best on the validation split.
"""

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from ehrseq.data.tensors import make_loader
from ehrseq.evaluate.task import OUTCOMES, SEQUENCES, SurvivalTask, score_model, training_metrics
from ehrseq.io import InputError, atomic_outputs, run_stage, write_json
from ehrseq.models.behrt import (
    FINETUNE_MODES,
    BEHRTConfig,
    BEHRTDataset,
    check_history,
    finetune_model,
    save_adapter,
    survival_loss,
)
from ehrseq.models.losses import bin_edges
from ehrseq.params import load_params
from ehrseq.plots import training_curves
from ehrseq.train.loop import fingerprint, load_pretrained, make_run_key, save_model
from ehrseq.train.tune import fit_best_lr, lr_grid, tune_metrics

PRETRAINED = Path("models/pretrain_behrt")
log = logging.getLogger("finetune_behrt")


def main(mode: str) -> None:
    params = load_params()
    fp = params.finetune
    tp = params.train.model_copy(update={"epochs": fp.epochs or params.train.epochs,
                                         "lr": fp.lr or params.train.lr})
    task = SurvivalTask.load()
    pretrained, pre_cfg = load_pretrained(PRETRAINED, "pretrain_behrt")
    edges = bin_edges(task.cuts)
    cfg = BEHRTConfig(**{**pre_cfg, "n_bins": len(edges) - 1,
                         "model_class": "ehrseq.models.behrt.BEHRTSurvival"})
    if cfg.vocab_size != task.seqs.vocab_size:
        raise InputError(f"{PRETRAINED}/config.json: vocab_size {cfg.vocab_size} differs from "
                         f"the sequences' {task.seqs.vocab_size}; re-run pretrain_behrt")
    encoder_state = pretrained.encoder.state_dict()
    check_history(cfg.max_len, params.outcome.history.max_tokens)
    train, val, test = (BEHRTDataset(task.dataset(s), cfg.max_len)
                        for s in ("train", "val", "test"))
    key = make_run_key("finetune_behrt", mode, cfg, fp, tp,
                       fingerprint(SEQUENCES, OUTCOMES, PRETRAINED))
    out = [Path(f"{d}/finetune_behrt/{mode}") for d in ("models", "data/predictions", "plots")]
    name = f"behrt_{mode}"
    with atomic_outputs(*out) as (model_dir, pred_dir, plots_dir):
        t0 = time.monotonic()
        # one fresh model per lr of tune.lrs (same seed), the best on the validation split
        tuned = fit_best_lr(lambda: finetune_model(mode, cfg, encoder_state, fp),
                            lr_grid(params.tune, tp.lr),
                            make_loader(train, tp.batch_size, shuffle=True, seed=tp.seed,
                                        num_workers=tp.num_workers),
                            survival_loss, tp, val_loader=make_loader(val, tp.batch_size),
                            run_key=key, checkpoint_root=tp.checkpoint_dir,
                            live_dir=plots_dir / "live", log=log.info)
        model, stats = tuned.model, tuned.stats
        if mode == "lora":  # the adapters and head alone; the base is models/pretrain_behrt
            model_dir.mkdir()
            save_adapter(model, model_dir / "adapter.safetensors")
            (model_dir / "adapter_config.json").write_text(json.dumps(
                {**model.peft_config["default"].to_dict(), "base_model": str(PRETRAINED)},
                indent=2, default=sorted) + "\n")
            (model_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
            (model_dir / "vocab.json").write_text(json.dumps(task.seqs.vocab))
            model = model.merge_and_unload()  # predict with plain merged weights
        else:
            save_model(model_dir, model, cfg, task.seqs.vocab)
        training_curves(stats["history"], plots_dir / "training_curves")
        metrics = score_model(name, model, make_loader(test, tp.batch_size), task,
                              params.evaluate, edges, pred_dir, plots_dir)
        ckpt_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        seconds = time.monotonic() - t0
    metrics.update(training_metrics(name, stats, params.evaluate.gpu_hourly_usd,
                                    mode=mode, size=cfg.size, checkpoint_bytes=ckpt_bytes,
                                    stage_seconds=seconds))
    metrics.update(tune_metrics(name, tuned))
    write_json(f"metrics/finetune_behrt/{mode}.json", metrics)
    log.info("BEHRT-%s %s (%d of %d params trained, lr %g): test C-index %.3f [%.3f, %.3f] "
             "in %.0f s", cfg.size, mode, stats["n_params_trainable"],
             metrics[f"{name}.n_params"], tuned.lr,
             metrics[f"{name}.c_harrell"], metrics[f"{name}.c_harrell_lo"],
             metrics[f"{name}.c_harrell_hi"], tuned.wall_time_s)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=FINETUNE_MODES)
    run_stage(lambda: main(parser.parse_args().mode))
