"""Bag-of-codes features at the landmark for the classical baselines (no loop per event)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def code_counts(codes: np.ndarray, visit_offsets: np.ndarray, patient_offsets: np.ndarray,
                index: np.ndarray, landmark_visits: np.ndarray, vocab_size: int,
                input_visits: np.ndarray | None = None) -> sp.csr_matrix:
    """Counts of each token id over each patient's first ``landmark_visits`` visits (of those,
    the last ``input_visits``: the window every model reads).

    Row i is patient ``index[i]``; only visits at or before the landmark are read, so no
    later event can leak into the features.
    """
    index = np.asarray(index, dtype=np.int64)
    nv = np.asarray(landmark_visits, dtype=np.int64)
    iv = nv if input_visits is None else np.asarray(input_visits, dtype=np.int64)
    end_visit = patient_offsets[index] + nv
    start = visit_offsets[end_visit - iv]
    stop = visit_offsets[end_visit]
    lengths = stop - start
    rows = np.repeat(np.arange(len(index)), lengths)
    # positions start[i] .. stop[i]-1 for every i, concatenated, without a Python loop
    pos = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) \
        + np.repeat(start, lengths)
    data = np.ones(len(pos), dtype=np.float32)
    m = sp.csr_matrix((data, (rows, codes[pos])), shape=(len(index), vocab_size))
    m.sum_duplicates()
    return m
