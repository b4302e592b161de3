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
    loaded: a warning names it, the run's checkpoints are removed and training starts afresh. ``max_steps`` stops after
    that many optimizer steps in all, with a checkpoint, like a pre-emption (a run resumed at
    or past it trains nothing); SIGTERM
    checkpoints at the next step and raises ``KeyboardInterrupt``. ``train_loader`` needs
    ``len()``; a sampler with ``set_epoch``/``skip_batches`` (see
    :class:`ehrseq.data.tensors.BucketBatchSampler`) is reshuffled per epoch and skipped
    into on a mid-epoch resume.

    Seed (:func:`seed_everything`) before building the model so its initial weights are
    reproducible too; ``fit`` seeds again before training.
    """
    t_start = time.monotonic()
    is_main = rank == 0
    rt = runtime or RuntimeParams()
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
    has_val = val_loader is not None or val_fn is not None
    monitor = monitor or ("val_loss" if val_loader is not None else
                          "train_loss" if not has_val else None)
    if monitor is None:
        raise ValueError("fit: pass monitor= naming one of the metrics val_fn returns")

    n_batches = len(train_loader)  # type: ignore[arg-type]
    if n_batches == 0:
        raise ValueError("fit: the training loader yields no batches")
    accum = params.grad_accum
    sampler = next((s for s in (getattr(train_loader, "batch_sampler", None),
                                getattr(train_loader, "sampler", None), train_loader)
                    if hasattr(s, "set_epoch")), None)
    total_steps = math.ceil(n_batches / accum) * params.epochs
    batch_size = getattr(sampler, "batch_size", None) or getattr(train_loader, "batch_size",
                                                                 None) or params.batch_size
    effective_batch = batch_size * accum * world_size
    base_lr = params.lr * (effective_batch / 64 if params.lr_scale_with_batch else 1.0)

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
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=base_lr,
                            fused=device.type == "cuda")
    sched = LRSchedule(params.schedule, total_steps, int(params.warmup_frac * total_steps),
                       mode=mode, min_delta=params.min_delta,
                       patience=max(1, params.patience // 2))
    stopper = EarlyStopping(params.patience, params.min_delta, mode)
    state = _LoopState()
    best: dict[str, torch.Tensor] | None = None
    rng_at_ckpt = rng_epoch_start = None
    run_dir = Path(checkpoint_root or rt.checkpoint_dir) / run_key
    resumed_from = None

    if checkpoint and resume and mirror is not None and not list_checkpoints(run_dir):
        try:  # a fresh machine: continue from the newest checkpoint mirrored to the remote
            mirror.pull_latest(run_key, run_dir)
        except Exception as err:  # noqa: BLE001 - an unreachable remote must not stop training
            log.warning("could not pull mirrored checkpoints: %s", err)
    found = load_checkpoint(run_dir) if checkpoint and resume else None
    if found is not None and (why := incompatibility(model, opt, found[1])) is not None:
        # written by another model (code outside the run key, another library version):
        # never half-loaded; this run starts afresh and its old checkpoints go
        log.warning("checkpoint %s does not fit this model (%s): starting afresh and "
                    "removing the run's old checkpoints", found[0], why)
        if is_main:
            for old in list_checkpoints(run_dir):
                shutil.rmtree(old, ignore_errors=True)
            if mirror is not None:
                try:
                    mirror.remove(run_key)
                except Exception as err:  # noqa: BLE001 - the local run goes on regardless
                    log.warning("could not remove mirrored checkpoints of %s: %s", run_key, err)
        found = None
    if found is not None:
        path, ck = found
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        best = ck.get("best")
        sched = LRSchedule(**ck["schedule"])
        stopper = EarlyStopping(**ck["stopper"])
        state = _LoopState(**ck["loop"])
        rng_at_ckpt, rng_epoch_start = ck["rng"]["at_checkpoint"], ck["rng"].get("epoch_start")
        resumed_from = state.step
        if is_main:
            print(f"resuming from {path} (epoch {state.epoch}, step {state.step})",
                  file=sys.stderr)
    prior_wall = state.wall_time_s
    if checkpoint and is_main:  # temporaries of a process killed while writing
        for tmp in run_dir.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def set_lr() -> float:
        lr = base_lr * sched.factor(state.step)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def write_checkpoint() -> None:
        state.wall_time_s = prior_wall + time.monotonic() - t_start
        if not (checkpoint and is_main):
            return
        state.seq += 1
        path = save_checkpoint(run_dir, f"{state.seq:06d}-step{state.step:09d}", {
            "model": cpu_state(model), "optimizer": opt.state_dict(), "best": best,
            "rng": {"at_checkpoint": get_rng(), "epoch_start": rng_epoch_start},
            "schedule": asdict(sched), "stopper": asdict(stopper), "loop": asdict(state),
        }, keep=keep_checkpoints)
        if mirror is not None:
            try:
                mirror.push(path, run_key)
            except Exception as err:  # noqa: BLE001 - keep training; the local copy exists
                log.warning("could not mirror checkpoint %s: %s", path.name, err)

    set_lr()
    live = _open_live(live_dir, state.history) if (live_dir and is_main) else None
    amp_ctx = autocast(device, rt.amp)
    preempt = _Preemption(handle_sigterm)
    last_ckpt = time.monotonic()
    hit_max = max_steps is not None and state.step >= max_steps   # resumed at or past it
    try:
        while not state.finished and state.epoch < params.epochs and not hit_max:
            epoch, skip = state.epoch, state.batch
            it, rng_epoch_start = _epoch_iterator(train_loader, sampler, epoch, skip,
                                                  rng_epoch_start, rng_at_ckpt)
            rng_at_ckpt = None
            net.train()
            loss_sum = torch.tensor(state.loss_sum, dtype=torch.float32, device=device)
            bar = tqdm(total=n_batches, initial=skip, desc=f"epoch {epoch + 1}/{params.epochs}",
                       disable=not (progress and is_main), leave=False, dynamic_ncols=True)
            t_epoch = time.monotonic()
            for i, batch in enumerate(it, start=skip):
                group_start = (i // accum) * accum
                group_n = min(accum, n_batches - group_start)
                last_in_group = i + 1 - group_start == group_n
                batch = move_to(batch, device)
                sync = contextlib.nullcontext() if last_in_group or not hasattr(net, "no_sync") \
                    else net.no_sync()
                with sync:
                    with amp_ctx:
                        loss = loss_fn(net, batch)
                    (loss.float() / group_n).backward()
                loss_sum += loss.detach().float()
                state.loss_n += 1
                size, tokens = batch_counts(batch)
                state.patients += size
                state.tokens += tokens
                bar.update(1)
                if not last_in_group:
                    continue
                if params.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                state.step += 1
                state.batch = i + 1
                set_lr()
                if state.step % 20 == 0:
                    bar.set_postfix(loss=f"{loss_sum.item() / state.loss_n:.4f}", refresh=False)
                hit_max = max_steps is not None and state.step >= max_steps
                due = (rt.checkpoint_every_steps and state.step % rt.checkpoint_every_steps == 0) \
                    or (rt.checkpoint_every_minutes
                        and time.monotonic() - last_ckpt >= 60 * rt.checkpoint_every_minutes)
                if (due or hit_max or preempt.flag) and state.batch < n_batches:
                    state.loss_sum = loss_sum.item()
                    state.train_time_s += time.monotonic() - t_epoch
                    t_epoch = time.monotonic()
                    write_checkpoint()
                    last_ckpt = time.monotonic()
                if preempt.flag and state.batch < n_batches:
                    raise KeyboardInterrupt("SIGTERM: checkpoint written, stopping")
                if on_step is not None:
                    on_step(state.step)
                if hit_max and state.batch < n_batches:
                    break
            bar.close()
            if hit_max and state.batch < n_batches:  # max_steps reached inside the epoch
                break
            train_loss = loss_sum.item() / max(state.loss_n, 1)
            state.train_time_s += time.monotonic() - t_epoch

            record = {"epoch": epoch + 1, "train_loss": train_loss,
                      "lr": opt.param_groups[0]["lr"]}
            if has_val:
                net.eval()
                with torch.no_grad():
                    if val_loader is not None:
                        record["val_loss"] = evaluate_loss(model, val_loader, loss_fn, device,
                                                           rt.amp)
                    if val_fn is not None:
                        with amp_ctx:
                            record.update({k: float(v) for k, v in val_fn(model, device).items()})
            if monitor not in record:
                raise KeyError(f"fit: monitor {monitor!r} is not among the epoch metrics "
                               f"{sorted(record)}")
            if stopper.update(record[monitor], epoch):
                best = cpu_state(model)
            sched.epoch_end(record[monitor])
            set_lr()
            state.history.append(record)
            state.epoch, state.batch, state.loss_sum, state.loss_n = epoch + 1, 0, 0.0, 0
            state.stopped_early = stopper.should_stop and state.epoch < params.epochs
            state.finished = state.epoch >= params.epochs or state.stopped_early
            if live is not None:
                _log_live(live, record)
            write_checkpoint()
            last_ckpt = time.monotonic()
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            if preempt.flag and not state.finished:
                raise KeyboardInterrupt("SIGTERM: checkpoint written, stopping")
    finally:
        preempt.close()
        if live is not None:
            live.end()

    if state.finished and checkpoint and is_main:   # a resume of a finished run needs its last
        trim(run_dir, 1)
        if mirror is not None:
            try:
                mirror.trim(run_key, 1)
            except Exception as err:  # noqa: BLE001 - an extra remote checkpoint is harmless
                log.warning("could not trim mirrored checkpoints of %s: %s", run_key, err)
    if state.finished and best is not None:
        model.load_state_dict(best)
    n_all, n_trainable = count_parameters(model)
    peak, peak_kind = peak_memory_mb(device)
    wall = prior_wall + time.monotonic() - t_start
    train_time = max(state.train_time_s, 1e-9)
    return {
        "completed": state.finished,
        "device": device.type,
        "device_name": device_name(device),
        "n_params": n_all,
        "n_params_trainable": n_trainable,
        "epochs": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "monitor": monitor,
        "best_epoch": stopper.best_epoch + 1,
        "best_value": stopper.best,
        "lr_base": base_lr,
        "effective_batch_size": effective_batch,
        "wall_time_s": wall,
        "train_time_s": state.train_time_s,
        "patients_per_s": state.patients / train_time,
        "tokens_per_s": state.tokens / train_time,
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_kind,
        "resumed_from_step": resumed_from,
        "history": state.history,
    }
