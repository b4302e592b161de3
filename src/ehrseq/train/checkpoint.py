"""The checkpoint codec: a training state (any nesting of tensors, arrays and JSON values)
written atomically as safetensors + JSON + a SHA-256 manifest, and read back verified.

Checkpoint directory (one sub-directory per checkpoint, newest ``keep_checkpoints`` kept; a
finished run keeps its last one only)::

    checkpoints/<stage>/<run key>/<lr_0.001>/
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

A checkpoint is loaded only into a model and optimizer it fits (:func:`incompatibility`), never
half-loaded. The runs of one stage are kept to the newest few (:func:`prune_runs`); a run in
progress holds a lock on its folder (:func:`hold_run`) so that another process never removes
it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


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
    trim(run_dir, keep)
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


def is_finished(path: str | Path) -> bool:
    """Whether checkpoint ``path`` is the last one of a run that trained to its end (read from
    its state.json alone; a missing or unreadable one counts as not finished)."""
    try:
        loop = json.loads((Path(path) / "state.json").read_text())["loop"]["__dict__"]
        return bool(dict(loop).get("finished"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def finished_runs(root: str | Path) -> list[str]:
    """Runs under ``root`` (``<stage>/<run key>``, relative) whose every lr ends in a finished
    checkpoint."""
    root = Path(root)
    out = []
    for run in sorted(p for p in root.rglob("*") if p.is_dir() and _is_run_key(p.name)):
        lrs = [d for d in run.iterdir() if d.is_dir() and list_checkpoints(d)]
        if lrs and all(is_finished(list_checkpoints(d)[-1]) for d in lrs):
            out.append(run.relative_to(root).as_posix())
    return out


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


def get_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def incompatibility(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ck: dict[str, Any]) -> str | None:
    """Why checkpoint ``ck`` cannot be loaded into ``model`` and ``optimizer`` (missing or
    unexpected weights, a shape that differs, another parameter layout of the optimizer), or
    None when it fits. Checked before anything is loaded, so a failure never half-loads."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for group in ("model", "best"):
        got = ck.get(group)
        if got is None:
            continue
        have = {k: tuple(v.shape) for k, v in got.items()}
        if missing := sorted(want.keys() - have.keys()):
            return f"{group}: missing key(s) {', '.join(missing[:5])}"
        if extra := sorted(have.keys() - want.keys()):
            return f"{group}: unexpected key(s) {', '.join(extra[:5])}"
        if shapes := [f"{k} {have[k]} vs {want[k]}" for k in sorted(want) if have[k] != want[k]]:
            return f"{group}: shape mismatch {', '.join(shapes[:5])}"
    opt = ck.get("optimizer") or {}
    sizes = [len(g["params"]) for g in optimizer.state_dict()["param_groups"]]
    saved = [len(g["params"]) for g in opt.get("param_groups", [])]
    if saved != sizes:
        return f"optimizer: parameter groups of {saved} parameters, the model's {sizes}"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, st in (opt.get("state") or {}).items():
        p = params[int(i)]
        for name, v in st.items():
            if isinstance(v, torch.Tensor) and v.ndim and tuple(v.shape) != tuple(p.shape):
                return f"optimizer: state {name} of parameter {i} has shape " \
                       f"{tuple(v.shape)}, the parameter {tuple(p.shape)}"
    return None


def trim(run_dir: str | Path, keep: int = 1) -> None:
    """Keep the newest ``keep`` checkpoints of a run (a finished run needs only its last;
    ``keep`` <= 0 keeps every one)."""
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


RUN_KEY_LEN = 16
"""Hex digits of a stage's run key (:func:`ehrseq.train.runtime.make_run_key`)."""
LOCK, USED = ".lock", ".used"


def _is_run_key(name: str) -> bool:
    return len(name) == RUN_KEY_LEN and all(c in "0123456789abcdef" for c in name)


@contextlib.contextmanager
def hold_run(run_dir: str | Path) -> Iterator[Path]:
    """Mark ``run_dir`` (one stage run: ``checkpoints/<stage>/<run key>``) as used now and hold
    a shared lock on it while the block runs, so :func:`prune_runs` in another process leaves it
    alone. The lock is the operating system's (``flock``): it goes with the process, also when
    the process is killed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / USED).touch()
    with open(run_dir / LOCK, "a") as f:
        _flock(f, shared=True, wait=True)
        try:
            yield run_dir
        finally:
            (run_dir / USED).touch()


def _flock(f, shared: bool, wait: bool) -> bool:
    try:
        import fcntl
    except ImportError:   # Windows: no advisory locks; a run goes on, pruning keeps every run
        return wait
    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(f.fileno(), flags)
        return True
    except BlockingIOError:
        return False


def prune_runs(stage_dir: str | Path, current: str, keep: int) -> list[Path]:
    """Remove the runs of one stage (``stage_dir/<run key>``) beyond the newest ``keep`` by
    last use, ``current`` always counted among them; a run that another process holds
    (:func:`hold_run`) is never removed. Returns the removed folders."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    runs = [p for p in stage_dir.iterdir() if p.is_dir() and _is_run_key(p.name)
            and p.name != current]

    def last_use(p: Path) -> float:
        return (p / USED if (p / USED).exists() else p).stat().st_mtime

    removed = []
    for run in sorted(runs, key=last_use, reverse=True)[max(keep - 1, 0):]:
        with open(run / LOCK, "a") as f:
            if not _flock(f, shared=False, wait=False):
                log.info("checkpoints %s in use by another process; kept", run)
                continue
            shutil.rmtree(run, ignore_errors=True)
        removed.append(run)
    return removed
