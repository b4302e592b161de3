"""Time-windowed code features at a landmark, in the style of MEDS-Tab (the count-based
features that EHR benchmarks find hardest for sequence models to beat).

For every landmark row and every code of the vocabulary, from the row's input window (the
visits every model reads, ``outcome.history``):

- the number of occurrences in the last ``w`` days before the landmark, for each ``w`` of
  ``windows`` (default 30 and 365 days);
- the number of occurrences in the whole input window;
- the recency of its last occurrence, ``exp(-days / 365)`` (1 on the landmark's day, 0 when the
  code never occurred: a sparse zero means "absent", as it should for trees).

And for every numeric observation the sequences carry as value tokens (``LOINC/<code>:q<i>``,
``sequences.numeric_bins`` > 0): its last value and its mean over the last 365 days, both as
the quantile bin ``i + 1`` (bins fitted on the training split; 0 = not measured).

Built sparse and vectorised over the offset arrays: no Python loop per patient, visit or event.
Column ``j * V + c`` is block ``j`` (the windows in order, then all-time, then recency) of code
``c``, then the last values and 365-day means of the K numeric codes;
:func:`window_feature_names` names them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from .tensors import Sequences, ranges

RECENCY_DAYS = 365.0


def value_tokens(tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per token id: its numeric code (-1 if not a value token) and bin + 1; the code names."""
    code_of = np.full(len(tokens), -1, np.int64)
    bin_of = np.zeros(len(tokens), np.float32)
    names: dict[str, int] = {}
    for i, t in enumerate(tokens):   # one pass over the vocabulary, not over events
        head, sep, q = str(t).rpartition(":q")
        if sep and q.isdigit():
            code_of[i] = names.setdefault(head, len(names))
            bin_of[i] = int(q) + 1
    return code_of, bin_of, list(names)


def _last_per_cell(key: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Positions of the smallest ``age`` for each distinct ``key``."""
    order = np.lexsort((age, key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return order[first]


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
    pick = _last_per_cell(r * V + code, age)            # recency: the smallest age per cell
    rec = sp.csr_matrix((np.exp(-age[pick] / RECENCY_DAYS).astype(np.float32),
                         (r[pick], code[pick])), shape=(n, V))
    code_of, bin_of, names = value_tokens(seqs.vocab["tokens"])
    K = len(names)
    vc = code_of[code]
    s = vc >= 0
    rv, cv, av, bv = r[s], vc[s], age[s], bin_of[code[s]]
    pick = _last_per_cell(rv * K + cv, av)
    last_value = sp.csr_matrix((bv[pick], (rv[pick], cv[pick])), shape=(n, K))
    w = av <= RECENCY_DAYS
    total = sp.csr_matrix((bv[w], (rv[w], cv[w])), shape=(n, K))      # duplicates sum
    count = sp.csr_matrix((np.ones(int(w.sum()), np.float32), (rv[w], cv[w])), shape=(n, K))
    mean_365 = total.tocsr()
    mean_365.sum_duplicates()
    count = count.tocsr()
    count.sum_duplicates()
    if mean_365.nnz:
        mean_365.data /= count.data      # same sparsity pattern: the same cells, same order
    out = sp.hstack(mats + [rec, last_value, mean_365], format="csr", dtype=np.float32)
    out.sum_duplicates()
    return out


def window_feature_names(tokens: Sequence[str], windows: Sequence[float] = (30.0, 365.0),
                         ) -> list[str]:
    """Column names of :func:`window_features`: ``count_30d:<token>`` ... ``recency:<token>``,
    then ``last_value:<code>`` and ``mean_365d:<code>`` of the numeric codes."""
    heads = [f"count_{w:g}d" for w in windows] + ["count_all", "recency"]
    values = value_tokens(tokens)[2]
    return [f"{h}:{t}" for h in heads for t in tokens] + \
        [f"{h}:{c}" for h in ("last_value", "mean_365d") for c in values]
