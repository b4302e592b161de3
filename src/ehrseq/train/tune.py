"""Equal tuning: every neural survival model gets the same learning-rate grid, chosen on the
validation split.

One shared, untuned learning rate would let "model A beats model B" mean "A happens to like
that learning rate". :func:`fit_best_lr` gives each training stage the same small budget
(``tune.lrs`` in params.yaml): for every learning rate of the grid, the same seed, a fresh model
from ``build_model()``, one :func:`ehrseq.train.loop.fit` with early stopping on the validation
loss; the model with the lowest best validation loss is kept (ties: the earlier lr of the
grid). It sees only the loaders it is given, train and validation: the test split is never
read, so choosing the lr leaves the test scores honest.

Each lr trains under its own run key (:func:`lr_run_key`, a folder in the run's), so
checkpoints of different lrs never mix and an interrupted tuning resumes every lr where it stopped (a finished lr returns
from its last checkpoint at once).

A race (``tune.race_epochs``, one round of successive halving) spends less of the budget on
losers: every lr first trains ``race_epochs`` epochs (a checkpoint at the cut), and only the
one with the lowest validation loss so far then trains on, resuming from that checkpoint to its
own early stop, so the kept model is bit-identical to that lr trained alone. Replayed on 42
recorded tuned trainings (``python docs/tools/tune_race.py``, docs/training.md): at 4 epochs the
same lr is kept in 37, 56 % of the epochs run, the worst kept validation loss 0.006 higher.
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
from . import distributed
from .loop import fit
from .runtime import seed_everything


@dataclass
class TuneResult:
    model: nn.Module
    """The model of the chosen lr, with its best epoch's weights (as :func:`fit` leaves it)."""
    lr: float
    stats: dict[str, Any]
    """:func:`fit`'s statistics of the chosen lr's run."""
    val_losses: dict[float, float] = field(default_factory=dict)
    """Best validation loss of every lr tried (inf where no epoch gave a finite one), over the
    epochs it ran (a race's losers: its first ``race_epochs``)."""
    epochs: dict[float, int] = field(default_factory=dict)
    """Epochs each lr ran."""
    wall_time_s: float = 0.0
    """Training time of every lr together (the real cost of the model)."""


def lr_grid(tune: TuneParams, default_lr: float) -> list[float]:
    """The learning rates a stage tries: ``tune.lrs``, or just ``default_lr`` (``train.lr`` or
    ``finetune.lr``) when tuning is off (null or empty)."""
    return list(tune.lrs) if tune.lrs else [default_lr]


def lr_run_key(run_key: str, lr: float) -> str:
    """The checkpoint key of one lr of a tuned run: a folder per lr inside the run's
    (``<run key>/lr_0.001``)."""
    return f"{run_key}/{lr_label(lr)}"


def lr_label(lr: float) -> str:
    """``0.003`` -> ``lr_0.003``: the lr's part of metric names and live-plot folders."""
    return f"lr_{float(lr):g}"


def fit_best_lr(build_model: Callable[[], nn.Module], lrs: Sequence[float],
                train_loader: Iterable, loss_fn: LossFn, params: TrainParams, *,
                val_loader: Iterable | None = None, run_key: str, live_dir: str | Path | None = None,
                log: Callable[[str], None] | None = None, race_epochs: int | None = None,
                **fit_kwargs) -> TuneResult:
    """Train one fresh model per learning rate of ``lrs`` and keep the one with the lowest
    best validation loss over ``val_loader``.

    ``build_model()`` is called after :func:`seed_everything` with ``params.seed``, so every lr
    starts from the same initial weights; ``params`` is used with its ``lr`` replaced.
    ``run_key`` is the stage's key; each lr checkpoints under :func:`lr_run_key`. With more
    than one lr, each writes its DVCLive metrics to ``live_dir/lr_<lr>``. Other keyword
    arguments go to :func:`fit`; the choice is by the lowest best value of the monitored
    metric (``val_loss`` by default, or a ``monitor`` of ``val_fn``). Only the best model so far
    is kept in memory besides the one training.

    ``race_epochs`` (with more than one lr, and fewer than ``params.epochs``): every lr trains
    that many epochs, then only the lowest (ties: the earlier lr) trains on to its end, from
    its checkpoint (without checkpoints, again from the start: the same model, more time).
    Under DDP every rank resumes from rank 0's checkpoint after a barrier; ranks on several
    machines would not see it, so there the race is off.
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
    if race_epochs is not None and race_epochs < 1:
        raise ValueError(f"fit_best_lr: race_epochs {race_epochs}; accepted: >= 1 or None")
    race = race_epochs if race_epochs and len(lrs) > 1 and race_epochs < params.epochs else None
    if race is not None and not distributed.single_node():
        race = None   # the winner's other ranks would not find rank 0's checkpoint
        if log is not None:
            log("race off: ranks on several machines; every lr trains to its end")
    losses: dict[float, float] = {}
    epochs: dict[float, int] = {}
    walls: dict[float, float] = {}

    def train(lr: float, max_steps: int | None = None) -> tuple[nn.Module, dict]:
        tp = params.model_copy(update={"lr": lr})
        seed_everything(tp.seed, tp.deterministic)  # the same initial weights for every lr
        model = build_model()
        live = Path(live_dir) / lr_label(lr) if live_dir is not None and len(lrs) > 1 \
            else live_dir
        kw = fit_kwargs if max_steps is None else {**fit_kwargs, "max_steps": max_steps}
        stats = fit(model, train_loader, loss_fn, tp, val_loader=val_loader,
                    run_key=lr_run_key(run_key, lr), live_dir=live, **kw)
        value = stats["best_value"]
        losses[lr] = float(value) if value is not None and math.isfinite(value) else math.inf
        epochs[lr] = stats["epochs"]
        # a resumed run's wall time includes its time before the interruption (or the race);
        # a race winner trained again from the start (no checkpoint) adds the race's time
        fresh_after_race = max_steps is None and stats["resumed_from_step"] is None
        walls[lr] = stats["wall_time_s"] + (walls.get(lr, 0.0) if fresh_after_race else 0.0)
        if log is not None:
            log(f"lr {lr:g}: best validation loss {losses[lr]:.5f} "
                f"(epoch {stats['best_epoch']} of {stats['epochs']}"
                f"{', race' if max_steps is not None else ''})")
        return model, stats

    if race is not None:
        steps = race * math.ceil(len(train_loader) / params.grad_accum)  # type: ignore[arg-type]
        at_cut: dict[float, float] = {}
        for lr in lrs:   # the model is dropped: the checkpoint holds it
            stats = train(lr, max_steps=steps)[1]
            # the best of the first `race` epochs, also when a checkpoint from an earlier run
            # is further on: the choice is the one a fresh race makes
            cut = [h.get(stats["monitor"], math.nan) for h in stats["history"][:race]]
            at_cut[lr] = min((v for v in cut if math.isfinite(v)), default=math.inf)
        distributed.barrier()   # rank 0 has written every cut's checkpoint before any resumes
        keep = min(lrs, key=lambda lr: at_cut[lr])   # ties: the earlier lr of the grid
        if log is not None:
            log(f"race after {race} epochs: lr {keep:g} trains on")
        model, stats = train(keep)
        best = TuneResult(model, keep, stats)
    else:
        best = None
        for lr in lrs:
            model, stats = train(lr)
            if best is None or losses[lr] < losses[best.lr]:
                best = TuneResult(model, lr, stats)
            del model   # a worse model is freed here
        assert best is not None
    best.val_losses, best.epochs, best.wall_time_s = losses, epochs, sum(walls.values())
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
        if lr in result.epochs:
            m[f"{name}.tune.{lr_label(lr)}.epochs"] = result.epochs[lr]
    return m
