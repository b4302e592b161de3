"""Bag-of-codes features at the landmark for the classical baselines (no loop per event)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def code_counts(codes: np.ndarray, visit_offsets: np.ndarray, patient_offsets: np.ndarray,
                index: np.ndarray, landmark_visits: np.ndarray, vocab_size: int) -> sp.csr_matrix:
    """Counts of each token id over each patient's first ``landmark_visits`` visits.

    Row i is patient ``index[i]``; only visits at or before the landmark are read, so no
    later event can leak into the features.
    """
    index = np.asarray(index, dtype=np.int64)
    nv = np.asarray(landmark_visits, dtype=np.int64)
    first_visit = patient_offsets[index]
    start = visit_offsets[first_visit]
    stop = visit_offsets[first_visit + nv]
    lengths = stop - start
    rows = np.repeat(np.arange(len(index)), lengths)
    # positions start[i] .. stop[i]-1 for every i, concatenated, without a Python loop
    pos = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) \
        + np.repeat(start, lengths)
    data = np.ones(len(pos), dtype=np.float32)
    m = sp.csr_matrix((data, (rows, codes[pos])), shape=(len(index), vocab_size))
    m.sum_duplicates()
    return m
