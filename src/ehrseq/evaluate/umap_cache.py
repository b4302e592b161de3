"""umap-learn with numba's on-disk cache switched on for umap-learn's own jitted functions.

umap-learn compiles about a hundred numba functions that it does not mark ``cache=True``, so
every process that fits a UMAP compiles them again: about 20 s on this project's 2-core VM,
paid twice per ``dvc repro`` (the Med2Vec code map and the cluster stage) and once per test
process. :func:`load_umap` turns numba's cache on for those dispatchers before their first
call: the compiled code is stored beside the package (or in numba's user cache directory where
that is read-only) and later processes load it. The functions and their results are the same
(tests/test_embed_cluster.py); only where the machine code comes from changes. ``make install``
fills the cache once.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = ("umap.umap_", "umap.layouts", "umap.distances", "umap.sparse", "umap.utils",
           "umap.spectral")
_enabled: list[str] = []


def load_umap() -> ModuleType:
    """``import umap``, with numba's on-disk cache on for its jitted functions (once)."""
    import umap
    from numba.core.registry import CPUDispatcher

    if not _enabled:
        for name in MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:      # a module a later umap-learn renamed: nothing to cache
                continue
            for attr, value in vars(module).items():
                if isinstance(value, CPUDispatcher):
                    value.enable_caching()
                    _enabled.append(f"{name}.{attr}")
    return umap


if __name__ == "__main__":      # `python -m ehrseq.evaluate.umap_cache`: fill the cache
    import warnings

    import numpy as np

    x = np.random.default_rng(0).random((60, 8), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "n_jobs overridden by random_state"
        for metric in ("euclidean", "cosine"):
            load_umap().UMAP(n_components=2, metric=metric, random_state=0).fit_transform(x)
    print(f"numba cache on for {len(_enabled)} umap-learn functions")
