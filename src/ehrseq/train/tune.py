"""Equal tuning: every neural survival model gets the same learning-rate grid, chosen on the
validation split.

One shared, untuned learning rate would let "model A beats model B" mean "A happens to like
that learning rate". :func:`fit_best_lr` gives each training stage the same small budget
(``tune.lrs`` in params.yaml): for every learning rate of the grid, the same seed, a fresh model
from ``build_model()``, one :func:`ehrseq.train.loop.fit` with early stopping on the validation
loss; the model with the lowest best validation loss is kept (ties: the earlier lr of the
grid). It sees only the loaders it is given, train and validation: the test split is never
read, so choosing the lr leaves the test scores honest.

Each lr trains under its own run key (:func:`lr_run_key`), so checkpoints of different lrs
never mix and an interrupted tuning resumes every lr where it stopped (a finished lr returns
from its last checkpoint at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..models.inference import LossFn
from ..params import TrainParams, TuneParams
from .loop import fit
from .runtime import make_run_key, seed_everything


@dataclass
class TuneResult:
    model: nn.Module
    """The model of the chosen lr, with its best epoch's weights (as :func:`fit` leaves it)."""
    lr: float
    stats: dict[str, Any]
    """:func:`fit`'s statistics of the chosen lr's run."""
    val_losses: dict[float, float] = field(default_factory=dict)
    """Best validation loss of every lr tried (inf where no epoch gave a finite one)."""
    wall_time_s: float = 0.0
    """Training time of every lr together (the real cost of the model)."""


def lr_grid(tune: TuneParams, default_lr: float) -> list[float]:
    """The learning rates a stage tries: ``tune.lrs``, or just ``default_lr`` (``train.lr`` or
    ``finetune.lr``) when tuning is off (null or empty)."""
    return list(tune.lrs) if tune.lrs else [default_lr]


def lr_run_key(run_key: str, lr: float) -> str:
    """The checkpoint key of one lr of a tuned run: different for every lr."""
    return make_run_key(run_key, {"lr": float(lr)})


def lr_label(lr: float) -> str:
    """``0.003`` -> ``lr_0.003``: the lr's part of metric names and live-plot folders."""
    return f"lr_{float(lr):g}"


def fit_best_lr(build_model: Callable[[], nn.Module], lrs: Sequence[float],
                train_loader: Iterable, loss_fn: LossFn, params: TrainParams, *,
                val_loader: Iterable | None = None, run_key: str, live_dir: str | Path | None = None,
                log: Callable[[str], None] | None = None, **fit_kwargs) -> TuneResult:
    """Train one fresh model per learning rate of ``lrs`` and keep the one with the lowest
    best validation loss over ``val_loader``.

    ``build_model()`` is called after :func:`seed_everything` with ``params.seed``, so every lr
    starts from the same initial weights; ``params`` is used with its ``lr`` replaced.
    ``run_key`` is the stage's key; each lr checkpoints under :func:`lr_run_key`. With more
    than one lr, each writes its DVCLive metrics to ``live_dir/lr_<lr>``. Other keyword
    arguments go to :func:`fit`; the choice is by the lowest best value of the monitored
    metric (``val_loss`` by default, or a ``monitor`` of ``val_fn``). Only the best model so far
    is kept in memory besides the one training.
    """
    lrs = [float(lr) for lr in lrs]
    if not lrs:
        raise ValueError("fit_best_lr: no learning rate to try")
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"fit_best_lr: repeated learning rates in {lrs}")
    if len(lrs) > 1 and val_loader is None and fit_kwargs.get("val_fn") is None:
        raise ValueError("fit_best_lr: choosing a learning rate needs a validation loader "
                         "(or val_fn)")
    if fit_kwargs.get("mode", "min") != "min":
        raise ValueError("fit_best_lr keeps the lowest monitored validation value (mode min)")
    best: TuneResult | None = None
    losses: dict[float, float] = {}
    wall = 0.0
    for lr in lrs:
        tp = params.model_copy(update={"lr": lr})
        seed_everything(tp.seed, tp.deterministic)  # the same initial weights for every lr
        model = build_model()
        live = Path(live_dir) / lr_label(lr) if live_dir is not None and len(lrs) > 1 \
            else live_dir
        stats = fit(model, train_loader, loss_fn, tp, val_loader=val_loader,
                    run_key=lr_run_key(run_key, lr), live_dir=live, **fit_kwargs)
        value = stats["best_value"]
        losses[lr] = float(value) if value is not None and math.isfinite(value) else math.inf
        wall += stats["wall_time_s"]   # a resumed lr counts its time before the interruption
        if log is not None:
            log(f"lr {lr:g}: best validation loss {losses[lr]:.5f} "
                f"(epoch {stats['best_epoch']} of {stats['epochs']})")
        if best is None or losses[lr] < losses[best.lr]:
            best = TuneResult(model, lr, stats)
        del model   # a worse model is freed here
    assert best is not None
    best.val_losses, best.wall_time_s = losses, wall
    return best


def tune_metrics(name: str, result: TuneResult) -> dict[str, Any]:
    """Flat metrics of a tuning: ``<name>.tuned_lr``, ``<name>.tune.n_lrs``,
    ``<name>.tune.wall_time_s`` (all lrs) and ``<name>.tune.lr_<lr>.val_loss`` for each lr
    (null where the lr gave no finite loss)."""
    m: dict[str, Any] = {f"{name}.tuned_lr": result.lr,
                         f"{name}.tune.n_lrs": len(result.val_losses),
                         f"{name}.tune.wall_time_s": result.wall_time_s}
    for lr, loss in result.val_losses.items():
        m[f"{name}.tune.{lr_label(lr)}.val_loss"] = loss if math.isfinite(loss) else None
    return m
