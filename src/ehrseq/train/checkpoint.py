"""The checkpoint codec: a training state (any nesting of tensors, arrays and JSON values)
written atomically as safetensors + JSON + a SHA-256 manifest, and read back verified.

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
