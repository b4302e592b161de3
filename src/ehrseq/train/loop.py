"""The one training loop every model uses, with checkpoint/resume that survives a lost machine.

:func:`fit` runs AdamW with warm-up then cosine/linear decay (or reduce-on-plateau), gradient
clipping and accumulation, bf16 autocast on CUDA, early stopping with best-weight restore,
DVCLive metrics per epoch and a progress bar. It checkpoints the full training state every N
steps / M minutes and at every epoch end into ``<checkpoint_dir>/<run key>/``; calling
:func:`fit` again with the same run key resumes, and in deterministic CPU mode ends with the
same weights and metrics as a run that was never interrupted.

Checkpoint directory (one sub-directory per checkpoint, newest ``keep_checkpoints`` kept)::

    checkpoints/<run key>/
      000007-step000120/
        model.safetensors       model weights
        optimizer.safetensors   AdamW moments and step counts
        best.safetensors        weights of the best epoch so far (absent before the first)
        rng.safetensors         torch / CUDA / NumPy RNG state tensors
        state.json              everything else: epoch, step, position in the epoch,
                                schedule, early stopping, history, Python RNG, counters
        manifest.json           SHA-256 of each file above, verified on load

Each checkpoint is written into a temporary sibling and renamed into place; a checkpoint whose
files are missing, truncated or altered is skipped (and renamed ``.corrupt-*``) in favour of
the previous one. Nothing is unpickled: tensors are read with safetensors, the rest is JSON.

Data-parallel training later: ``wrap_model`` wraps the moved model (e.g. in DDP), only
``rank`` 0 writes checkpoints, metrics and progress, and accumulation steps use ``no_sync``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import platform
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as _st_load_model
from safetensors.torch import save_model as _st_save_model
from torch import nn
from tqdm.auto import tqdm

from ..params import TrainParams

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]


# --------------------------------------------------------------------------- environment

def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: 'cuda' requested but CUDA is not available "
                           "(accepted here: auto, cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("train.device: 'mps' requested but MPS is not available "
                           "(accepted here: auto, cpu)")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` use deterministic kernels where
    PyTorch has them (a warning, not an error, where it has none)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)


def make_run_key(*parts: Any) -> str:
    """A short stable key from anything JSON-able (params, data hashes): the checkpoint
    folder of one run, so a changed configuration never resumes a stale checkpoint."""
    blob = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(*paths: str | Path, extra: bytes = b"") -> str:
    """SHA-256 of the files under ``paths`` (folders: their files, sorted by path) and
    ``extra``: part of a run key, so a changed input never resumes a stale checkpoint."""
    h = hashlib.sha256()
    files = sorted(f for p in map(Path, paths)
                   for f in ([p] if p.is_file() else p.iterdir()) if f.is_file())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(extra)
    return h.hexdigest()


def _plain(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return obj


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def move_to(obj: Any, device: torch.device) -> Any:
    """Move a batch (an object with ``.to``, or dicts/lists/tuples of tensors) to ``device``."""
    nb = device.type == "cuda"
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=nb)
    if hasattr(obj, "to"):
        return obj.to(device, non_blocking=nb)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def _batch_size(batch: Any) -> tuple[int, int]:
    """(patients, tokens) in a batch: ``n_patients``/``n_tokens`` attributes, else the first
    dimension of the first tensor."""
    n = getattr(batch, "n_patients", None)
    if n is None:
        first = next((t for t in (batch.values() if isinstance(batch, dict) else batch)
                      if isinstance(t, torch.Tensor)), None)
        n = int(first.shape[0]) if first is not None else 0
    return int(n), int(getattr(batch, "n_tokens", 0))


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2**20 if platform.system() == "Darwin" else 2**10), "process_peak_rss"
    except ImportError:  # Windows
        return float("nan"), "unavailable"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


# --------------------------------------------------------------------------- schedule, stopping

@dataclass
class LRSchedule:
    """Multiplier of the base learning rate after ``step`` optimizer steps: linear warm-up,
    then cosine or linear decay to 0, constant, or halving on a plateau of the monitored
    metric (after ``patience`` epochs without improvement, down to 1/1000)."""

    kind: str
    total_steps: int
    warmup_steps: int
    mode: str = "min"
    min_delta: float = 0.0
    patience: int = 2
    scale: float = 1.0
    best: float | None = None
    bad_epochs: int = 0

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind in ("constant", "plateau"):
            return self.scale
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    def epoch_end(self, value: float) -> None:
        if self.kind != "plateau" or not math.isfinite(value):
            return
        if _improves(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale, self.bad_epochs = max(self.scale * 0.5, 1e-3), 0


def _improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement larger than ``min_delta``."""

    patience: int
    min_delta: float = 0.0
    mode: str = "min"
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's metric; True when it is the new best."""
        if _improves(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


# --------------------------------------------------------------------------- checkpoints

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of ``obj`` with every tensor/array moved into ``tensors`` by path."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(obj.astype(np.int64 if obj.dtype.kind in "iu"
                                                    else np.float64))
        return {"__ndarray__": path, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    return {k: _decode(v, tensors) for k, v in obj["__dict__"]}


def _write_synced(path: Path, data: bytes | None = None) -> None:
    if data is not None:
        path.write_bytes(data)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str | Path, name: str, groups: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write ``groups`` (``model``, ``optimizer``, ``best``, ``rng`` ... : any nesting of
    tensors, arrays and JSON values) as checkpoint ``name``, atomically; prune to ``keep``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    skeleton, files = {}, {}
    for group, obj in groups.items():
        tensors: dict[str, torch.Tensor] = {}
        skeleton[group] = _encode(obj, group, tensors)
        if tensors:
            fname = f"{group}.safetensors"
            save_file(tensors, str(tmp / fname))
            _write_synced(tmp / fname)
            files[fname] = _sha256(tmp / fname)
    _write_synced(tmp / "state.json", json.dumps(skeleton).encode())
    files["state.json"] = _sha256(tmp / "state.json")
    _write_synced(tmp / "manifest.json", json.dumps({"files": files}, indent=1).encode())
    final = run_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    with contextlib.suppress(OSError):  # make the rename durable where directories sync
        fd = os.open(run_dir, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name[:1].isdigit())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Verify every file's SHA-256 against the manifest and decode the groups."""
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    for fname, digest in manifest["files"].items():
        if _sha256(path / fname) != digest:
            raise ValueError(f"{path / fname}: SHA-256 mismatch (corrupt or truncated)")
    skeleton = json.loads((path / "state.json").read_text())
    tensors = {}
    for fname in manifest["files"]:
        if fname.endswith(".safetensors"):
            tensors.update(load_file(str(path / fname)))
    return {group: _decode(obj, tensors) for group, obj in skeleton.items()}


def load_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, or None. Ones that fail are renamed
    ``.corrupt-<name>`` with a warning, and the previous one is tried."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, read_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - any failure means: not usable
            log.warning("checkpoint %s unusable (%s); falling back to the previous one",
                        path, err)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(f".corrupt-{path.name}-{int(time.time())}"))
    return None


def _get_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- model files

def save_model(directory: str | Path, model: nn.Module, config: Any,
               vocab: dict | str | Path | None = None) -> None:
    """Write ``model.safetensors``, ``config.json`` (with ``model_class``) and ``vocab.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(_plain(config))
    config.setdefault("model_class", f"{type(model).__module__}.{type(model).__qualname__}")
    _st_save_model(model, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if isinstance(vocab, (str, Path)):
        shutil.copyfile(vocab, directory / "vocab.json")
    elif vocab is not None:
        (directory / "vocab.json").write_text(json.dumps(vocab))


def load_model(directory: str | Path, factory: Callable[[dict], nn.Module] | None = None,
               device: str | torch.device = "cpu") -> tuple[nn.Module, dict, dict | None]:
    """Rebuild a model saved by :func:`save_model`: (model, config, vocab or None).

    ``factory(config)`` builds the module; by default ``config["model_class"]`` is imported
    and its ``from_config(config)`` called."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if factory is None:
        module, _, name = config["model_class"].rpartition(".")
        factory = getattr(importlib.import_module(module), name).from_config
    model = factory(config)
    _st_load_model(model, str(directory / "model.safetensors"), device=str(device))
    vocab_path = directory / "vocab.json"
    vocab = json.loads(vocab_path.read_text()) if vocab_path.exists() else None
    return model.to(device), config, vocab


def load_pretrained(directory: str | Path, stage: str, vocab: dict | None = None,
                    ) -> tuple[nn.Module, dict]:
    """:func:`load_model` of the model stage ``stage`` wrote, for a stage that starts from it:
    a missing model, or a vocabulary other than ``vocab`` (when given), is an ``InputError``
    naming the stage to (re-)run."""
    from ..io import InputError

    directory = Path(directory)
    if not (directory / "model.safetensors").exists():
        raise InputError(f"{directory}/model.safetensors: missing; run stage {stage}")
    model, config, saved = load_model(directory)
    if vocab is not None and saved is not None and saved.get("tokens") != vocab["tokens"]:
        raise InputError(f"{directory}/vocab.json: differs from the sequences vocabulary; "
                         f"re-run {stage}")
    return model, config


# --------------------------------------------------------------------------- evaluation helpers

@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: Iterable, loss_fn: LossFn,
                  device: torch.device | None = None, amp: bool = True) -> float:
    """Mean of ``loss_fn`` over a loader, weighted by batch size, in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float32, device=device)
    n = 0
    for batch in loader:
        batch = move_to(batch, device)
        size, _ = _batch_size(batch)
        with _autocast(device, amp):
            total += loss_fn(model, batch).float() * size
        n += size
    model.train(was_training)
    return float(total.item()) / max(n, 1)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, fn: Callable[[nn.Module, Any], torch.Tensor],
            n_rows: int | None = None, device: torch.device | None = None,
            amp: bool = True) -> np.ndarray:
    """``fn(model, batch)`` for every batch, put back in dataset row order (``batch.rows``)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows, outs = [], []
    for batch in loader:
        batch = move_to(batch, device)
        with _autocast(device, amp):
            outs.append(fn(model, batch).float().cpu())
        rows.append(batch.rows.cpu())
    model.train(was_training)
    rows_t, out_t = torch.cat(rows), torch.cat(outs)
    n_rows = n_rows or int(rows_t.max()) + 1
    result = np.full((n_rows, *out_t.shape[1:]), np.nan, dtype=np.float32)
    result[rows_t.numpy()] = out_t.numpy()
    return result


# --------------------------------------------------------------------------- the loop

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
        _set_rng(rng_at_ckpt)
    elif skip and rng_epoch_start is not None:
        _set_rng(rng_epoch_start)
    start_state = _get_rng()
    in_sampler = bool(skip) and hasattr(sampler, "skip_batches")
    if in_sampler:
        sampler.skip_batches(skip)  # no batch is built for the skipped part
    it = iter(loader)
    if skip and not in_sampler:
        for _ in range(skip):
            next(it)
    if skip and rng_at_ckpt is not None:
        _set_rng(rng_at_ckpt)
    return it, start_state


def fit(
    model: nn.Module,
    train_loader: Iterable,
    loss_fn: LossFn,
    params: TrainParams,
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

    ``loss_fn(model, batch)`` returns a scalar loss (it must call ``model(...)`` so a DDP
    wrapper sees the forward). Validation each epoch: ``val_loss`` over ``val_loader`` and/or
    the metrics of ``val_fn(model, device)``; early stopping and best-weight selection use
    ``monitor`` (default ``val_loss``, else ``train_loss``) in ``mode`` min or max. At the end
    the best epoch's weights are loaded into ``model``.

    Checkpoints go to ``(checkpoint_root or params.checkpoint_dir) / run_key`` (derive the
    key with :func:`make_run_key` from everything that defines the run); with ``resume`` an
    existing one is continued (a finished run returns at once). ``max_steps`` stops after
    that many optimizer steps in all, with a checkpoint, like a pre-emption; SIGTERM
    checkpoints at the next step and raises ``KeyboardInterrupt``. ``train_loader`` needs
    ``len()``; a sampler with ``set_epoch``/``skip_batches`` (see
    :class:`ehrseq.data.tensors.BucketBatchSampler`) is reshuffled per epoch and skipped
    into on a mid-epoch resume.

    Seed (:func:`seed_everything`) before building the model so its initial weights are
    reproducible too; ``fit`` seeds again before training.
    """
    t_start = time.monotonic()
    is_main = rank == 0
    if params.threads:
        torch.set_num_threads(params.threads)
    device = resolve_device(params.device)
    seed_everything(params.seed, params.deterministic)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.to(device)
    net = wrap_model(model, device) if wrap_model else model
    if params.compile:   # the compiled module shares its parameters with ``model``
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
    groups = [{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": params.weight_decay},
              {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=base_lr,
                            fused=device.type == "cuda")
    sched = LRSchedule(params.schedule, total_steps, int(params.warmup_frac * total_steps),
                       mode=mode, min_delta=params.min_delta,
                       patience=max(1, params.patience // 2))
    stopper = EarlyStopping(params.patience, params.min_delta, mode)
    state = _LoopState()
    best: dict[str, torch.Tensor] | None = None
    rng_at_ckpt = rng_epoch_start = None
    run_dir = Path(checkpoint_root or params.checkpoint_dir) / run_key
    resumed_from = None

    if checkpoint and resume and mirror is not None and not list_checkpoints(run_dir):
        try:  # a fresh machine: continue from the newest checkpoint mirrored to the remote
            mirror.pull_latest(run_key, run_dir)
        except Exception as err:  # noqa: BLE001 - an unreachable remote must not stop training
            log.warning("could not pull mirrored checkpoints: %s", err)
    if checkpoint and resume and (found := load_checkpoint(run_dir)) is not None:
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
            g["lr"] = lr
        return lr

    def write_checkpoint() -> None:
        state.wall_time_s = prior_wall + time.monotonic() - t_start
        if not (checkpoint and is_main):
            return
        state.seq += 1
        path = save_checkpoint(run_dir, f"{state.seq:06d}-step{state.step:09d}", {
            "model": _cpu_state(model), "optimizer": opt.state_dict(), "best": best,
            "rng": {"at_checkpoint": _get_rng(), "epoch_start": rng_epoch_start},
            "schedule": asdict(sched), "stopper": asdict(stopper), "loop": asdict(state),
        }, keep=keep_checkpoints)
        if mirror is not None:
            try:
                mirror.push(path, run_key)
            except Exception as err:  # noqa: BLE001 - keep training; the local copy exists
                log.warning("could not mirror checkpoint %s: %s", path.name, err)

    set_lr()
    live = _open_live(live_dir, state.history) if (live_dir and is_main) else None
    autocast = _autocast(device, params.amp)
    preempt = _Preemption(handle_sigterm)
    last_ckpt = time.monotonic()
    hit_max = False
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
                    with autocast:
                        loss = loss_fn(net, batch)
                    (loss.float() / group_n).backward()
                loss_sum += loss.detach().float()
                state.loss_n += 1
                size, tokens = _batch_size(batch)
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
                due = (params.checkpoint_every_steps and state.step % params.checkpoint_every_steps == 0) \
                    or (params.checkpoint_every_minutes
                        and time.monotonic() - last_ckpt >= 60 * params.checkpoint_every_minutes)
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
                                                           params.amp)
                    if val_fn is not None:
                        with autocast:
                            record.update({k: float(v) for k, v in val_fn(model, device).items()})
            if monitor not in record:
                raise KeyError(f"fit: monitor {monitor!r} is not among the epoch metrics "
                               f"{sorted(record)}")
            if stopper.update(record[monitor], epoch):
                best = _cpu_state(model)
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

    if state.finished and best is not None:
        model.load_state_dict(best)
    n_all, n_trainable = count_parameters(model)
    peak, peak_kind = _peak_memory_mb(device)
    wall = prior_wall + time.monotonic() - t_start
    train_time = max(state.train_time_s, 1e-9)
    return {
        "completed": state.finished,
        "device": device.type,
        "device_name": _device_name(device),
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
