"""Atomic outputs, metrics files and the stage entry point shared by every stage script.

A stage writes every output into a temporary sibling and renames it into place only when the
whole stage succeeded, so a failed or interrupted stage never leaves half-written output and
never destroys what was stored before.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


class InputError(ValueError):
    """Bad input data; the message names the file, column or row and what is accepted."""


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_outputs(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield temporary paths standing in for ``paths``; move them into place on success.

    Each yielded path is where the caller writes (a directory for directory outputs: create
    files inside it; for a file output, write the yielded path itself). On any exception the
    temporaries are removed and the existing outputs are left untouched.
    """
    finals = [Path(p) for p in paths]
    holders = [_tmp_sibling(p) for p in finals]
    temps = [h / p.name for h, p in zip(holders, finals, strict=True)]
    try:
        yield temps
        for tmp, final in zip(temps, finals, strict=True):
            if not tmp.exists():
                raise RuntimeError(f"stage did not write its declared output {final}")
        for tmp, final in zip(temps, finals, strict=True):
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            if final.exists() or final.is_symlink():
                os.replace(final, old)
            os.replace(tmp, final)
            if old.exists() or old.is_symlink():
                _remove(old)
    finally:
        for h in holders:
            shutil.rmtree(h, ignore_errors=True)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else round(f, 6)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def flat_metrics(d: dict, prefix: str = "") -> dict:
    """Flatten nested dicts to ``a.b.c`` keys (what ``dvc metrics diff`` reads best)."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_metrics(v, key + "."))
        else:
            out[key] = v
    return out


def run_stage(main: Callable[[], None]) -> None:
    """Entry point of every stage script: clear one-line errors and a non-zero exit."""
    from .params import ParamsError

    try:
        main()
    except (ParamsError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; no output was changed", file=sys.stderr)
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
