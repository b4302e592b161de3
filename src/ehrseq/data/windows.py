"""Time-windowed code features at a landmark, in the style of MEDS-Tab (the count-based
features that EHR benchmarks find hardest for sequence models to beat).

For every landmark row and every code of the vocabulary, from the row's input window (the
visits every model reads, ``outcome.history``):

- the number of occurrences in the last ``w`` days before the landmark, for each ``w`` of
  ``windows`` (default 30 and 365 days);
- the number of occurrences in the whole input window;
- the recency of its last occurrence, ``exp(-days / 365)`` (1 on the landmark's day, 0 when the
  code never occurred: a sparse zero means "absent", as it should for trees).

Built sparse and vectorised over the offset arrays: no Python loop per patient, visit or event.
Column ``j * V + c`` is block ``j`` (the windows in order, then all-time, then recency) of code
``c``; :func:`window_feature_names` names them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from .tensors import Sequences, ranges

RECENCY_DAYS = 365.0


def window_features(seqs: Sequences, index, landmark_visits, window_visits, landmark_time,
                    windows: Sequence[float] = (30.0, 365.0)) -> sp.csr_matrix:
    """``[rows, V * (len(windows) + 2)]`` float32 CSR (see the module docstring);
    ``landmark_time`` in days since the epoch, like ``visit_time``."""
    index = np.asarray(index, np.int64)
    lm = np.asarray(landmark_visits, np.int64)
    keep = np.asarray(window_visits, np.int64)
    n, V = len(index), int(seqs.vocab_size)
    po, vo = seqs.patient_offsets, seqs.visit_offsets
    last = po[index] + lm - 1                           # global index of the landmark visit
    vis, row, _ = ranges(last + 1 - keep, keep)         # every input visit, and its row
    tok, which, _ = ranges(vo[vis], vo[vis + 1] - vo[vis])
    code, r = np.asarray(seqs.codes)[tok].astype(np.int64), row[which]
    t0 = np.asarray(landmark_time, np.float64)
    age = np.maximum(t0[r] - np.asarray(seqs.visit_time, np.float64)[vis[which]], 0.0)
    blocks = [age <= w for w in windows] + [np.ones(len(code), bool)]
    mats = [sp.csr_matrix((np.ones(int(m.sum()), np.float32), (r[m], code[m])), shape=(n, V))
            for m in blocks]                              # duplicates sum: counts
    key = r * V + code                                    # recency: the smallest age per cell
    order = np.lexsort((age, key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    pick = order[first]
    rec = sp.csr_matrix((np.exp(-age[pick] / RECENCY_DAYS).astype(np.float32),
                         (r[pick], code[pick])), shape=(n, V))
    out = sp.hstack(mats + [rec], format="csr", dtype=np.float32)
    out.sum_duplicates()
    return out


def window_feature_names(tokens: Sequence[str], windows: Sequence[float] = (30.0, 365.0),
                         ) -> list[str]:
    """Column names of :func:`window_features`: ``count_30d:<token>`` ... ``recency:<token>``."""
    heads = [f"count_{w:g}d" for w in windows] + ["count_all", "recency"]
    return [f"{h}:{t}" for h in heads for t in tokens]
