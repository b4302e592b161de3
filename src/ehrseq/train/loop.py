"""The one training loop every model uses, with checkpoint/resume that survives a lost machine.

:func:`fit` runs AdamW with warm-up then cosine/linear decay (or reduce-on-plateau), gradient
clipping and accumulation, bf16 autocast on CUDA, early stopping with best-weight restore,
DVCLive metrics per epoch and a progress bar. It checkpoints the full training state every N
steps / M minutes and at every epoch end into ``<checkpoint_dir>/<run key>/``; calling
:func:`fit` again with the same run key resumes, and in deterministic CPU mode ends with the
same weights and metrics as a run that was never interrupted.

Data-parallel training later: ``wrap_model`` wraps the moved model (e.g. in DDP), only
``rank`` 0 writes checkpoints, metrics and progress, and accumulation steps use ``no_sync``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.inference import (
    LossFn,
    autocast,
    batch_counts,
    evaluate_loss,
    move_to,
    resolve_device,
)
from ..models.store import cpu_state
from ..params import RuntimeParams, TrainParams
from .checkpoint import (
    get_rng,
    incompatibility,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    set_rng,
    trim,
)
from .runtime import count_parameters, device_name, peak_memory_mb, seed_everything
from .schedule import EarlyStopping, LRSchedule

log = logging.getLogger(__name__)


@dataclass
class _LoopState:
    """Everything about the loop's position that a checkpoint must restore (JSON-able)."""

    epoch: int = 0            # epochs completed
    batch: int = 0            # micro-batches consumed in the current epoch
    step: int = 0             # optimizer steps taken
    seq: int = 0              # checkpoints written
    loss_sum: float = 0.0     # current epoch's summed train loss and micro-batch count
    loss_n: int = 0
    patients: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    finished: bool = False
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)


class _Preemption:
    """Turns SIGTERM (a spot instance reclaimed, a pod evicted) into a flag the loop checks
    at the next optimizer step, so it can checkpoint and stop instead of dying mid-write."""

    def __init__(self, enabled: bool):
        self.flag, self._old = False, None
        if enabled and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.flag = True

    def close(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _open_live(live_dir: str | Path, history: list[dict]):
    """DVCLive writing only into ``live_dir`` (never the root dvc.yaml, no experiment
    commits); a resumed run replays the checkpointed history so the files match."""
    from dvclive import Live

    live = Live(dir=str(live_dir), resume=False, dvcyaml=None, save_dvc_exp=False,
                report=None)
    for record in history:
        _log_live(live, record)
    return live


def _log_live(live, record: dict) -> None:
    for k, v in record.items():
        if k != "epoch" and isinstance(v, (int, float)):
            live.log_metric(k, v)
    live.next_step()


def _epoch_iterator(loader: Iterable, sampler: Any, epoch: int, skip: int,
                    rng_epoch_start: dict | None, rng_at_ckpt: dict | None):
    """An iterator over epoch ``epoch`` from micro-batch ``skip`` on, leaving the global RNG
    where an uninterrupted run would have it; also returns the RNG state at the epoch start.

    Making a loader's iterator may draw from the global RNG (shuffling, worker seeds), so a
    mid-epoch resume replays the epoch's start state, makes the iterator, skips the batches
    already trained on, and only then restores the checkpoint's state.
    """
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if skip == 0 and rng_at_ckpt is not None:
        set_rng(rng_at_ckpt)
    elif skip and rng_epoch_start is not None:
        set_rng(rng_epoch_start)
    start_state = get_rng()
    in_sampler = bool(skip) and hasattr(sampler, "skip_batches")
    if in_sampler:
        sampler.skip_batches(skip)  # no batch is built for the skipped part
    it = iter(loader)
    if skip and not in_sampler:
        for _ in range(skip):
            next(it)
    if skip and rng_at_ckpt is not None:
        set_rng(rng_at_ckpt)
    return it, start_state


@dataclass
class _Checkpoints:
    """A run's checkpoint folder ``run_dir`` and its copy on ``mirror`` under ``key``. Every rank
    reads it when ``enabled``; only rank 0 (``is_main``) writes, trims and removes."""

    run_dir: Path
    key: str
    mirror: Any
    keep: int
    enabled: bool
    is_main: bool

    @property
    def writes(self) -> bool:
        return self.enabled and self.is_main

    def load(self, resume: bool, model: nn.Module,
             opt: torch.optim.Optimizer) -> tuple[Path, dict] | None:
        """The newest checkpoint that fits ``model`` and ``opt`` (pulled from the mirror onto a
        fresh machine), or None; one that does not fit is removed, never half-loaded."""
        if not (self.enabled and resume):
            return None
        if self.mirror is not None and not list_checkpoints(self.run_dir):
            try:  # a fresh machine: continue from the newest checkpoint mirrored to the remote
                self.mirror.pull_latest(self.key, self.run_dir)
            except Exception as err:  # noqa: BLE001 - an unreachable remote must not stop it
                log.warning("could not pull mirrored checkpoints: %s", err)
        found = load_checkpoint(self.run_dir)
        if found is not None and (why := incompatibility(model, opt, found[1])) is not None:
            # written by another model (code outside the run key, another library version)
            log.warning("checkpoint %s does not fit this model (%s): starting afresh and "
                        "removing the run's old checkpoints", found[0], why)
            self._remove_all()
            return None
        return found

    def _remove_all(self) -> None:
        if not self.is_main:
            return
        for old in list_checkpoints(self.run_dir):
            shutil.rmtree(old, ignore_errors=True)
        if self.mirror is not None:
            try:
                self.mirror.remove(self.key)
            except Exception as err:  # noqa: BLE001 - the local run goes on regardless
                log.warning("could not remove mirrored checkpoints of %s: %s", self.key, err)

    def remove_temporaries(self) -> None:
        """Remove what a process killed while writing a checkpoint left behind."""
        if self.writes:
            for tmp in self.run_dir.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def save(self, name: str, groups: dict[str, Any]) -> None:
        path = save_checkpoint(self.run_dir, name, groups, keep=self.keep)
        if self.mirror is not None:
            try:
                self.mirror.push(path, self.key)
            except Exception as err:  # noqa: BLE001 - keep training; the local copy exists
                log.warning("could not mirror checkpoint %s: %s", path.name, err)

    def keep_last(self) -> None:
        """A finished run keeps its last checkpoint only (a resume of it needs no more)."""
        trim(self.run_dir, 1)
        if self.mirror is not None:
            try:
                self.mirror.trim(self.key, 1)
            except Exception as err:  # noqa: BLE001 - an extra remote checkpoint is harmless
                log.warning("could not trim mirrored checkpoints of %s: %s", self.key, err)


@dataclass
class _Run:
    """One call of :func:`fit`: what it trains with, its hooks, and where it stands (``state``
    and the rest of what a checkpoint holds), shared by the steps below."""

    model: nn.Module
    net: nn.Module                  # what is called: ``model`` wrapped (DDP) and/or compiled
    loader: Iterable
    sampler: Any                    # the loader's per-epoch reshuffling sampler, if any
    n_batches: int
    loss_fn: LossFn
    params: TrainParams
    rt: RuntimeParams
    device: torch.device
    opt: torch.optim.Optimizer
    sched: LRSchedule
    stopper: EarlyStopping
    base_lr: float
    effective_batch: int
    ckpt: _Checkpoints
    val_loader: Iterable | None
    val_fn: Callable[[nn.Module, torch.device], dict[str, float]] | None
    monitor: str
    max_steps: int | None
    on_step: Callable[[int], None] | None
    on_epoch_end: Callable[[int, dict], None] | None
    show_progress: bool
    t_start: float
    state: _LoopState = field(default_factory=_LoopState)
    best: dict[str, torch.Tensor] | None = None
    rng_at_ckpt: dict | None = None
    rng_epoch_start: dict | None = None
    resumed_from: int | None = None
    prior_wall: float = 0.0         # wall time of the run before it was resumed
    # set as the loop starts, after a resume: DVCLive, autocast, the SIGTERM flag, timers
    live: Any = None
    amp: Any = None
    preempt: _Preemption | None = None
    last_ckpt: float = 0.0
    t_epoch: float = 0.0
    hit_max: bool = False           # max_steps reached


def fit(
    model: nn.Module,
    train_loader: Iterable,
    loss_fn: LossFn,
    params: TrainParams,
    runtime: RuntimeParams | None = None,
    *,
    val_loader: Iterable | None = None,
    val_fn: Callable[[nn.Module, torch.device], dict[str, float]] | None = None,
    monitor: str | None = None,
    mode: str = "min",
    run_key: str = "run",
    checkpoint: bool = True,
    checkpoint_root: str | Path | None = None,
    mirror: Any = None,
    keep_checkpoints: int = 2,
    resume: bool = True,
    live_dir: str | Path | None = None,
    wrap_model: Callable[[nn.Module, torch.device], nn.Module] | None = None,
    rank: int = 0,
    world_size: int = 1,
    max_steps: int | None = None,
    on_step: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    handle_sigterm: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place and return run statistics (with ``history`` per epoch).

    ``params`` is what changes the weights (params.yaml ``train``); ``runtime`` the machine
    (``runtime``: device, threads, AMP, compile, checkpoint cadence and folder; default
    :class:`ehrseq.params.RuntimeParams`).

    ``loss_fn(model, batch)`` returns a scalar loss (it must call ``model(...)`` so a DDP
    wrapper sees the forward). Validation each epoch: ``val_loss`` over ``val_loader`` and/or
    the metrics of ``val_fn(model, device)``; early stopping and best-weight selection use
    ``monitor`` (default ``val_loss``, else ``train_loss``) in ``mode`` min or max. At the end
    the best epoch's weights are loaded into ``model``.

    Checkpoints go to ``(checkpoint_root or runtime.checkpoint_dir) / run_key`` (derive the
    key with :func:`make_run_key` from everything that defines the run, code included); with
    ``resume`` an existing one is continued (a finished run returns at once, and keeps only its
    last checkpoint). One that does not fit ``model`` (other weights or shapes) is never
    loaded: a warning names it, the run's checkpoints are removed and training starts afresh.
    ``max_steps`` stops after that many optimizer steps in all, with a checkpoint, like a
    pre-emption (a run resumed at or past it trains nothing); SIGTERM checkpoints at the next
    step and raises ``KeyboardInterrupt``. ``train_loader`` needs ``len()``; a sampler with
    ``set_epoch``/``skip_batches`` (see :class:`ehrseq.data.tensors.BucketBatchSampler`) is
    reshuffled per epoch and skipped into on a mid-epoch resume.

    Seed (:func:`seed_everything`) before building the model so its initial weights are
    reproducible too; ``fit`` seeds again before training.
    """
    t_start = time.monotonic()
    rt = runtime or RuntimeParams()
    device, net = _place(model, params, rt, wrap_model)
    monitor = _default_monitor(monitor, val_loader, val_fn)
    n_batches = len(train_loader)  # type: ignore[arg-type]
    if n_batches == 0:
        raise ValueError("fit: the training loader yields no batches")
    sampler = _reshuffling_sampler(train_loader)
    base_lr, effective_batch = _base_lr(params, train_loader, sampler, world_size)
    opt = _optimizer(model, params, base_lr, device)
    run = _Run(
        model=model, net=net, loader=train_loader, sampler=sampler, n_batches=n_batches,
        loss_fn=loss_fn, params=params, rt=rt, device=device, opt=opt,
        sched=_schedule(params, n_batches, mode),
        stopper=EarlyStopping(params.patience, params.min_delta, mode),
        base_lr=base_lr, effective_batch=effective_batch,
        ckpt=_Checkpoints(Path(checkpoint_root or rt.checkpoint_dir) / run_key, run_key, mirror,
                          keep_checkpoints, enabled=checkpoint, is_main=rank == 0),
        val_loader=val_loader, val_fn=val_fn, monitor=monitor, max_steps=max_steps,
        on_step=on_step, on_epoch_end=on_epoch_end, show_progress=progress and rank == 0,
        t_start=t_start)
    _resume(run, run.ckpt.load(resume, model, opt))
    run.ckpt.remove_temporaries()
    _set_lr(run)
    run.live = _open_live(live_dir, run.state.history) if live_dir and rank == 0 else None
    run.amp = autocast(device, rt.amp)
    run.preempt = _Preemption(handle_sigterm)
    run.last_ckpt = time.monotonic()
    run.hit_max = max_steps is not None and run.state.step >= max_steps  # resumed at or past
    try:
        while not run.state.finished and run.state.epoch < params.epochs and not run.hit_max:
            train_loss = _train_epoch(run)
            if train_loss is None:   # max_steps reached inside the epoch
                break
            _end_epoch(run, train_loss)
    finally:
        run.preempt.close()
        if run.live is not None:
            run.live.end()
    return _finish(run)


# -- setting up ------------------------------------------------------------------------------

def _place(model: nn.Module, params: TrainParams, rt: RuntimeParams,
           wrap_model: Callable[[nn.Module, torch.device], nn.Module] | None,
           ) -> tuple[torch.device, nn.Module]:
    """Threads, device and seed, then ``model`` on the device; returns the device and the
    module to call (``model`` wrapped and/or compiled, sharing its parameters)."""
    if rt.threads:
        torch.set_num_threads(rt.threads)
    device = resolve_device(rt.device)
    seed_everything(params.seed, params.deterministic)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.to(device)
    net = wrap_model(model, device) if wrap_model else model
    if rt.compile:   # the compiled module shares its parameters with ``model``
        net = torch.compile(net, dynamic=True)
    return device, net


def _default_monitor(monitor: str | None, val_loader: Iterable | None,
                     val_fn: Callable | None) -> str:
    """``monitor``, else ``val_loss`` with a validation loader, else ``train_loss`` without
    any validation; a ``val_fn`` alone must be told which of its metrics to follow."""
    has_val = val_loader is not None or val_fn is not None
    monitor = monitor or ("val_loss" if val_loader is not None else
                          "train_loss" if not has_val else None)
    if monitor is None:
        raise ValueError("fit: pass monitor= naming one of the metrics val_fn returns")
    return monitor


def _reshuffling_sampler(loader: Iterable) -> Any:
    """The loader's batch sampler, sampler or the loader itself that has ``set_epoch``."""
    return next((s for s in (getattr(loader, "batch_sampler", None),
                             getattr(loader, "sampler", None), loader)
                 if hasattr(s, "set_epoch")), None)


def _base_lr(params: TrainParams, loader: Iterable, sampler: Any,
             world_size: int) -> tuple[float, int]:
    """The base learning rate (scaled by effective batch / 64 with ``lr_scale_with_batch``)
    and the effective batch size: micro-batch x accumulation x ranks."""
    batch_size = getattr(sampler, "batch_size", None) or getattr(loader, "batch_size",
                                                                 None) or params.batch_size
    effective_batch = batch_size * params.grad_accum * world_size
    scale = effective_batch / 64 if params.lr_scale_with_batch else 1.0
    return params.lr * scale, effective_batch


def _optimizer(model: nn.Module, params: TrainParams, base_lr: float,
               device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, over the trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # a model may train some parameters faster: ``lr_scales`` {name prefix: factor} (e.g. a new
    # head on a pre-trained encoder); factor 1 first, so param_groups[0] has the base rate
    scales = getattr(model, "lr_scales", None) or {}

    def scale(name: str) -> float:
        return next((s for pre, s in scales.items() if name.startswith(pre)), 1.0)

    groups = [{"params": [p for n, p in named if (p.ndim >= 2) == decay and scale(n) == s],
               "weight_decay": params.weight_decay if decay else 0.0, "lr_scale": s}
              for s in sorted({1.0, *map(scale, (n for n, _ in named))}, key=lambda s: s != 1.0)
              for decay in (True, False)]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=base_lr,
                             fused=device.type == "cuda")


def _schedule(params: TrainParams, n_batches: int, mode: str) -> LRSchedule:
    """The learning-rate schedule over all the run's optimizer steps."""
    total_steps = math.ceil(n_batches / params.grad_accum) * params.epochs
    return LRSchedule(params.schedule, total_steps, int(params.warmup_frac * total_steps),
                      mode=mode, min_delta=params.min_delta,
                      patience=max(1, params.patience // 2))


def _resume(run: _Run, found: tuple[Path, dict] | None) -> None:
    """Put the model, optimizer, schedule, early stopping, loop position and RNG back where
    checkpoint ``found`` left them (nothing when None)."""
    if found is None:
        return
    path, ck = found
    run.model.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    run.best = ck.get("best")
    run.sched = LRSchedule(**ck["schedule"])
    run.stopper = EarlyStopping(**ck["stopper"])
    run.state = _LoopState(**ck["loop"])
    run.rng_at_ckpt, run.rng_epoch_start = ck["rng"]["at_checkpoint"], ck["rng"].get("epoch_start")
    run.resumed_from = run.state.step
    run.prior_wall = run.state.wall_time_s
    if run.ckpt.is_main:
        print(f"resuming from {path} (epoch {run.state.epoch}, step {run.state.step})",
              file=sys.stderr)


# -- the loop ------------------------------------------------------------------------------

def _set_lr(run: _Run) -> None:
    """Every group at the schedule's rate for the current step, times its ``lr_scale``."""
    lr = run.base_lr * run.sched.factor(run.state.step)
    for g in run.opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def _train_epoch(run: _Run) -> float | None:
    """Train the rest of the current epoch; returns its mean train loss, or None when
    ``max_steps`` stopped it part-way."""
    st = run.state
    epoch, skip = st.epoch, st.batch
    it, run.rng_epoch_start = _epoch_iterator(run.loader, run.sampler, epoch, skip,
                                              run.rng_epoch_start, run.rng_at_ckpt)
    run.rng_at_ckpt = None
    run.net.train()
    loss_sum = torch.tensor(st.loss_sum, dtype=torch.float32, device=run.device)
    bar = tqdm(total=run.n_batches, initial=skip, desc=f"epoch {epoch + 1}/{run.params.epochs}",
               disable=not run.show_progress, leave=False, dynamic_ncols=True)
    run.t_epoch = time.monotonic()
    for i, batch in enumerate(it, start=skip):
        last_in_group = _accumulate(run, i, batch, loss_sum)
        bar.update(1)
        if last_in_group and _step(run, i, loss_sum, bar):
            break
    bar.close()
    if run.hit_max and st.batch < run.n_batches:
        return None
    train_loss = loss_sum.item() / max(st.loss_n, 1)
    st.train_time_s += time.monotonic() - run.t_epoch
    return train_loss


def _accumulate(run: _Run, i: int, batch: Any, loss_sum: torch.Tensor) -> bool:
    """Forward and backward of micro-batch ``i``, its loss added to ``loss_sum``; returns
    whether it closes its accumulation group (DDP all-reduces the gradients only then)."""
    st = run.state
    group_start = (i // run.params.grad_accum) * run.params.grad_accum
    group_n = min(run.params.grad_accum, run.n_batches - group_start)
    last_in_group = i + 1 - group_start == group_n
    batch = move_to(batch, run.device)
    sync = contextlib.nullcontext() if last_in_group or not hasattr(run.net, "no_sync") \
        else run.net.no_sync()
    with sync:
        with run.amp:
            loss = run.loss_fn(run.net, batch)
        (loss.float() / group_n).backward()
    loss_sum += loss.detach().float()
    st.loss_n += 1
    size, tokens = batch_counts(batch)
    st.patients += size
    st.tokens += tokens
    return last_in_group


def _step(run: _Run, i: int, loss_sum: torch.Tensor, bar: Any) -> bool:
    """The optimizer step after micro-batch ``i``, then a checkpoint when one is due inside the
    epoch; returns True when ``max_steps`` ends the epoch here."""
    st = run.state
    if run.params.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.params.grad_clip)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    st.step += 1
    st.batch = i + 1
    _set_lr(run)
    if st.step % 20 == 0:
        bar.set_postfix(loss=f"{loss_sum.item() / st.loss_n:.4f}", refresh=False)
    run.hit_max = run.max_steps is not None and st.step >= run.max_steps
    mid_epoch = st.batch < run.n_batches
    if (_checkpoint_due(run) or run.hit_max or run.preempt.flag) and mid_epoch:
        st.loss_sum = loss_sum.item()
        st.train_time_s += time.monotonic() - run.t_epoch
        run.t_epoch = time.monotonic()
        _checkpoint(run)
    if run.preempt.flag and mid_epoch:
        raise KeyboardInterrupt("SIGTERM: checkpoint written, stopping")
    if run.on_step is not None:
        run.on_step(st.step)
    return run.hit_max and mid_epoch


def _end_epoch(run: _Run, train_loss: float) -> None:
    """Validate, keep the best weights, update the schedule, log the epoch and checkpoint it."""
    st, epoch = run.state, run.state.epoch
    record = {"epoch": epoch + 1, "train_loss": train_loss, "lr": run.opt.param_groups[0]["lr"]}
    record.update(_evaluate(run))
    if run.monitor not in record:
        raise KeyError(f"fit: monitor {run.monitor!r} is not among the epoch metrics "
                       f"{sorted(record)}")
    if run.stopper.update(record[run.monitor], epoch):
        run.best = cpu_state(run.model)
    run.sched.epoch_end(record[run.monitor])
    _set_lr(run)
    st.history.append(record)
    st.epoch, st.batch, st.loss_sum, st.loss_n = epoch + 1, 0, 0.0, 0
    st.stopped_early = run.stopper.should_stop and st.epoch < run.params.epochs
    st.finished = st.epoch >= run.params.epochs or st.stopped_early
    if run.live is not None:
        _log_live(run.live, record)
    _checkpoint(run)
    if run.on_epoch_end is not None:
        run.on_epoch_end(epoch, record)
    if run.preempt.flag and not st.finished:
        raise KeyboardInterrupt("SIGTERM: checkpoint written, stopping")


def _evaluate(run: _Run) -> dict[str, float]:
    """The epoch's validation metrics: ``val_loss`` over the validation loader and/or those of
    ``val_fn`` (none without either)."""
    metrics: dict[str, float] = {}
    if run.val_loader is None and run.val_fn is None:
        return metrics
    run.net.eval()
    with torch.no_grad():
        if run.val_loader is not None:
            metrics["val_loss"] = evaluate_loss(run.model, run.val_loader, run.loss_fn,
                                                run.device, run.rt.amp)
        if run.val_fn is not None:
            with run.amp:
                metrics.update({k: float(v) for k, v in run.val_fn(run.model, run.device).items()})
    return metrics


# -- checkpointing and the result ------------------------------------------------------------

def _checkpoint_due(run: _Run) -> bool:
    """Whether ``runtime``'s cadence (every N steps / M minutes) asks for a checkpoint now."""
    rt = run.rt
    return bool((rt.checkpoint_every_steps and run.state.step % rt.checkpoint_every_steps == 0)
                or (rt.checkpoint_every_minutes
                    and time.monotonic() - run.last_ckpt >= 60 * rt.checkpoint_every_minutes))


def _checkpoint(run: _Run) -> None:
    """Write the full training state (rank 0, when checkpointing), named by sequence and step."""
    st = run.state
    st.wall_time_s = run.prior_wall + time.monotonic() - run.t_start
    if run.ckpt.writes:
        st.seq += 1
        run.ckpt.save(f"{st.seq:06d}-step{st.step:09d}", {
            "model": cpu_state(run.model), "optimizer": run.opt.state_dict(), "best": run.best,
            "rng": {"at_checkpoint": get_rng(), "epoch_start": run.rng_epoch_start},
            "schedule": asdict(run.sched), "stopper": asdict(run.stopper), "loop": asdict(st),
        })
    run.last_ckpt = time.monotonic()


def _finish(run: _Run) -> dict[str, Any]:
    """A finished run keeps its last checkpoint and the best epoch's weights; returns the run
    statistics."""
    st = run.state
    if st.finished and run.ckpt.writes:
        run.ckpt.keep_last()
    if st.finished and run.best is not None:
        run.model.load_state_dict(run.best)
    n_all, n_trainable = count_parameters(run.model)
    peak, peak_kind = peak_memory_mb(run.device)
    wall = run.prior_wall + time.monotonic() - run.t_start
    train_time = max(st.train_time_s, 1e-9)
    return {
        "completed": st.finished,
        "device": run.device.type,
        "device_name": device_name(run.device),
        "n_params": n_all,
        "n_params_trainable": n_trainable,
        "epochs": st.epoch,
        "steps": st.step,
        "stopped_early": st.stopped_early,
        "monitor": run.monitor,
        "best_epoch": run.stopper.best_epoch + 1,
        "best_value": run.stopper.best,
        "lr_base": run.base_lr,
        "effective_batch_size": run.effective_batch,
        "wall_time_s": wall,
        "train_time_s": st.train_time_s,
        "patients_per_s": st.patients / train_time,
        "tokens_per_s": st.tokens / train_time,
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_kind,
        "resumed_from_step": run.resumed_from,
        "history": st.history,
    }
