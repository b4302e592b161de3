"""The one training-stage skeleton (a recipe, as in torchtune): every training stage calls
:func:`train_stage` with what is its own (the model, its data, its loss) and gets the rest the
same way:

- seed, then one fresh model per learning rate of ``tune.lrs`` (:func:`ehrseq.train.tune.fit_best_lr`);
- DDP under ``torchrun`` (sharded loader, wrapped model; rank 0 alone writes);
- checkpoints every ``runtime.checkpoint_every_*`` into ``runtime.checkpoint_dir/<stage>/<run
  key>`` and, with ``runtime.mirror_checkpoints``, to the DVC remote, so a new machine resumes
  from there. The run key hashes the stage, its params, its input data and its code (the
  script and every ehrseq module it imports, :func:`ehrseq.imports.code_fingerprint`): the same
  run resumes, any change starts afresh. After a run, the stage keeps its newest
  ``runtime.checkpoint_keep_runs`` runs (:func:`ehrseq.train.checkpoint.prune_runs`);
- ``fit``, then the model saved (``save``, default :func:`ehrseq.models.store.save_model`);
- training curves (``plots/<stage>/training_curves``) and DVCLive files;
- the stage's own outputs (``finish``: test predictions, embeddings ...);
- run statistics under the same keys for every stage (:func:`run_stats`), in
  ``metrics/<stage>.json`` and, for a stage with predictions, beside them as ``<name>.json``
  so ``evaluate`` finds them with the predictions.

Every output is written atomically (:func:`ehrseq.io.atomic_outputs`). No scoring happens here:
the ``evaluate`` stage scores every prediction. Cost is the report's too (``report.gpu_hourly_usd``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..data.task import SurvivalTask
from ..data.tensors import make_loader
from ..imports import code_fingerprint
from ..io import atomic_outputs, write_json
from ..models.inference import LossFn, predict
from ..models.store import save_model
from ..params import Params, TrainParams
from ..plots import skipped_figure, training_curves
from ..survival.bins import bin_edges
from ..survival.curves import interpolate_discrete
from . import distributed
from .checkpoint import hold_run, prune_runs
from .mirror import CheckpointMirror
from .runtime import fingerprint, make_run_key
from .tune import TuneResult, fit_best_lr, lr_grid, tune_metrics

log = logging.getLogger(__name__)

RUN_STATS = ("n_params", "n_params_trainable", "epochs", "best_epoch", "best_val_loss",
             "train_seconds", "patients_per_s", "tokens_per_s", "peak_memory_mb", "device",
             "device_type", "world_size", "checkpoint_bytes")
"""The keys every training stage reports as ``<name>.<key>`` (plus ``tuned_lr`` and ``tune.*``)."""


@dataclass
class Outputs:
    """Where a training stage writes (the temporary paths while it runs)."""

    model: Path
    plots: Path
    predictions: Path | None = None
    extra: tuple[Path, ...] = ()


def run_stats(name: str, tuned: TuneResult, world_size: int, checkpoint_bytes: int,
              **extra: Any) -> dict[str, Any]:
    """``<name>.*`` statistics of a run, the same keys (:data:`RUN_STATS`) for every stage."""
    s = tuned.stats
    m = {"n_params": s["n_params"], "n_params_trainable": s["n_params_trainable"],
         "epochs": s["epochs"], "best_epoch": s["best_epoch"],
         "best_val_loss": s["best_value"] if s["best_value"] is None
         or math.isfinite(s["best_value"]) else None,
         "train_seconds": s["wall_time_s"], "patients_per_s": s["patients_per_s"],
         "tokens_per_s": s["tokens_per_s"], "peak_memory_mb": s["peak_memory_mb"],
         "device": s["device_name"], "device_type": s["device"], "world_size": world_size,
         "checkpoint_bytes": checkpoint_bytes, **extra}
    out = {f"{name}.{k}": v for k, v in m.items()}
    out.update(tune_metrics(name, tuned))
    return out


def train_stage(stage: str, name: str, *, params: Params, build: Callable[[], nn.Module],
                loss_fn: LossFn, train_data: Any, val_data: Any = None,
                train: TrainParams | None = None, lrs: Sequence[float] | None = None,
                inputs: Sequence[str | Path] = (), key: Sequence[Any] = (),
                loader: Callable[..., Any] = make_loader,
                val_fn: Callable | None = None, monitor: str | None = None,
                predictions: bool = False, extra_outputs: Sequence[str | Path] = (),
                config: Any = None, vocab: dict | None = None,
                save: Callable[[nn.Module, Path], None] | None = None,
                finish: Callable[[nn.Module, Outputs], dict] | None = None,
                extra_stats: dict | None = None,
                ) -> dict | None:
    """Train a stage's model by the one recipe; returns its metrics (None on ranks > 0).

    ``build()`` makes a fresh model (called after seeding, once per lr). ``train_data`` and
    ``val_data`` are datasets for ``loader`` (default :func:`ehrseq.data.tensors.make_loader`,
    called as ``loader(data, batch_size, shuffle=, seed=, num_workers=, rank=, world_size=)``);
    or pass ``val_fn``/``monitor`` for a validation that is not a loss over a loader. ``lrs``
    defaults to ``tune.lrs`` (or ``train.lr`` when tuning is off). ``inputs`` are the files
    whose content keys the checkpoints, with ``key`` (anything else that defines the run).
    Outputs: ``models/<stage>``, ``plots/<stage>``, with ``predictions`` also
    ``data/predictions/<stage>``, plus ``extra_outputs``. The model is saved with ``config``
    and ``vocab`` (or by ``save(model, dir)``); ``finish(model, outputs)`` then writes the
    stage's own files and returns extra metrics.
    """
    tp = train or params.train
    rt = params.runtime
    ddp = distributed.setup()
    train_loader = loader(train_data, tp.batch_size, shuffle=True, seed=tp.seed,
                          num_workers=rt.num_workers, rank=ddp.rank, world_size=ddp.world_size)
    val_loader = None if val_data is None else loader(val_data, tp.batch_size,
                                                      num_workers=rt.num_workers)
    script = sys._getframe(1).f_globals.get("__file__")   # the stage script that called
    # the run statistics name the run too (a curve point's subset, a fold's k and K)
    key_hash = make_run_key(stage, *key, tp, ddp.world_size, fingerprint(*inputs),
                            code_fingerprint(script), extra_stats or {})
    run_key = f"{stage}/{key_hash}"   # checkpoints/<stage>/<run key>/<lr>/ (tune.lr_run_key)
    mirror = CheckpointMirror.from_dvc(check=True) if rt.mirror_checkpoints else None
    lrs = list(lrs) if lrs is not None else lr_grid(params.tune, tp.lr)
    fit_kw = dict(val_loader=val_loader, val_fn=val_fn, run_key=run_key, runtime=rt,
                  checkpoint_root=rt.checkpoint_dir, mirror=mirror, wrap_model=distributed.wrap,
                  rank=ddp.rank, world_size=ddp.world_size, race_epochs=params.tune.race_epochs)
    if monitor is not None:
        fit_kw["monitor"] = monitor
    if not ddp.is_main:  # other ranks train; rank 0 alone writes outputs
        fit_best_lr(build, lrs, train_loader, loss_fn, tp, **fit_kw)
        distributed.teardown()
        return None
    stage_dir = Path(rt.checkpoint_dir) / stage
    with hold_run(stage_dir / key_hash):   # no other process prunes this run meanwhile
        paths = [Path("models") / stage, Path("plots") / stage]
        if predictions:
            paths.append(Path("data/predictions") / stage)
        paths += [Path(p) for p in extra_outputs]
        t0 = time.monotonic()
        with atomic_outputs(*paths) as tmp:
            out = Outputs(tmp[0], tmp[1], tmp[2] if predictions else None,
                          tuple(tmp[3 if predictions else 2:]))
            tuned = fit_best_lr(build, lrs, train_loader, loss_fn, tp, live_dir=out.plots / "live",
                                log=lambda msg: log.info("%s: %s", stage, msg), **fit_kw)
            distributed.teardown()
            model = tuned.model
            if save is not None:
                save(model, out.model)
            else:
                save_model(out.model, model, config, vocab)
            training_curves(tuned.stats["history"], out.plots / "training_curves")
            metrics = dict(finish(model, out) or {}) if finish is not None else {}
            ckpt_bytes = sum(f.stat().st_size for f in out.model.glob("*.safetensors"))
            stats = run_stats(name, tuned, ddp.world_size, ckpt_bytes,
                              size=params.model.size, stage_seconds=time.monotonic() - t0,
                              **(extra_stats or {}))
            if out.predictions is not None:
                out.predictions.mkdir(exist_ok=True)
                (out.predictions / f"{name}.json").write_text(json.dumps(
                    {"model": name, "stage": stage,
                     **{k[len(name) + 1:]: v for k, v in stats.items()}}, indent=1,
                    sort_keys=True) + "\n")
        metrics.update(stats)
        write_json(f"metrics/{stage}.json", metrics)
        log.info("%s: %s (%d params, %d trained, lr %g of %s) in %.0f s on %s", stage, name,
                 tuned.stats["n_params"], tuned.stats["n_params_trainable"], tuned.lr, lrs,
                 tuned.wall_time_s, tuned.stats["device_name"])
    for gone in prune_runs(stage_dir, key_hash, rt.checkpoint_keep_runs):
        log.info("%s: removed the checkpoints of an older run (%s)", stage, gone)
    return metrics


def finetune_lrs(params: Params, default_lr: float) -> list[float]:
    """The learning rates of fine-tuning a pre-trained encoder whole: ``tune.finetune_lrs``
    (``tune.lrs`` where it is null; ``default_lr`` alone when tuning is off)."""
    if not params.tune.lrs:
        return [default_lr]
    return list(params.tune.finetune_lrs or params.tune.lrs)


def skip_stage(stage: str, reason: str, metrics: dict) -> None:
    """A stage with nothing to learn (e.g. no positive label in a small cohort) still writes
    its declared outputs, each saying why, so the DAG goes on."""
    log.warning("%s: nothing trained: %s", stage, reason)
    with atomic_outputs(*(Path(d) / stage for d in ("models", "data/predictions", "plots"))) \
            as (model_dir, pred, plots):
        for d in (model_dir, pred):
            d.mkdir()
            (d / "SKIPPED.txt").write_text(reason + "\n")
        skipped_figure(f"{stage}: nothing trained\n" + reason, plots / "skipped.png")
    write_json(f"metrics/{stage}.json", {**metrics, "trained": 0, "skipped.reason": reason})


def survival_predictions(name: str, model: nn.Module, task: SurvivalTask, loader: Any,
                         pred_dir: Path) -> None:
    """A discrete-time survival model's test predictions in the format every model shares:
    ``pred_dir/<name>.npz`` with the test landmarks' keys (:meth:`SurvivalTask.keys`), ``times``
    (:meth:`SurvivalTask.time_grid`) and ``surv`` (S(t|x) on it: the model's S at its bin edges,
    constant hazard within each bin, flat beyond the last edge). ``loader`` yields the test
    rows (``batch.rows``: their order in the test split)."""
    te = task.rows("test")
    surv_edges = predict(model, loader, lambda m, b: m.predict_survival(b), len(te))
    times = task.time_grid()
    surv = interpolate_discrete(surv_edges, bin_edges(task.cuts), times)
    pred_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(pred_dir / f"{name}.npz", **task.keys("test"), times=times, surv=surv)
