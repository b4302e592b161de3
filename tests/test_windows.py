"""Time-windowed code features (MEDS-Tab style) against a plain loop over the events."""

from __future__ import annotations

import numpy as np
import pytest

from ehrseq.data.tensors import toy_sequences
from ehrseq.data.windows import RECENCY_DAYS, window_feature_names, window_features


def brute(seqs, index, lm, keep, t0, windows):
    V = seqs.vocab_size
    out = np.zeros((len(index), V * (len(windows) + 2)))
    for i, (p, k, w, t) in enumerate(zip(index, lm, keep, t0, strict=True)):
        first_visit = seqs.patient_offsets[p]
        for v in range(first_visit + k - w, first_visit + k):
            age = max(t - seqs.visit_time[v], 0.0)
            for c in seqs.codes[seqs.visit_offsets[v]:seqs.visit_offsets[v + 1]]:
                for j, win in enumerate(windows):
                    out[i, j * V + c] += age <= win
                out[i, len(windows) * V + c] += 1
                rec = np.exp(-age / RECENCY_DAYS)
                col = (len(windows) + 1) * V + c
                out[i, col] = max(out[i, col], rec)
    return out


@pytest.mark.parametrize("windows", [(30.0, 365.0), (7.0,)])
def test_matches_a_loop_over_events(windows):
    seqs = toy_sequences(60, vocab_size=25, max_visits=9, max_codes=4, seed=4)
    rng = np.random.default_rng(0)
    index = rng.choice(seqs.n_patients, 40)
    index = index[seqs.n_visits[index] >= 1]
    lm = np.array([rng.integers(1, seqs.n_visits[p] + 1) for p in index])
    keep = np.array([rng.integers(1, k + 1) for k in lm])           # the input window
    last = seqs.patient_offsets[index] + lm - 1
    t0 = seqs.visit_time[last] + rng.uniform(0, 60, len(index))    # landmark after the visit
    got = window_features(seqs, index, lm, keep, t0, windows).toarray()
    want = brute(seqs, index, lm, keep, t0, windows)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    names = window_feature_names([f"t{i}" for i in range(25)], windows)
    assert len(names) == got.shape[1] and names[-1] == "recency:t24"


def test_only_the_input_window_counts():
    """A visit before the input window never reaches the features (the shared history)."""
    seqs = toy_sequences(10, vocab_size=20, max_visits=8, seed=1)
    p = int(np.argmax(seqs.n_visits))
    k = int(seqs.n_visits[p])
    t0 = [seqs.visit_time[seqs.patient_offsets[p] + k - 1]]
    whole = window_features(seqs, [p], [k], [k], t0).toarray()
    last_only = window_features(seqs, [p], [k], [1], t0).toarray()
    v = seqs.patient_offsets[p] + k - 1
    codes = seqs.codes[seqs.visit_offsets[v]:seqs.visit_offsets[v + 1]]
    V = seqs.vocab_size
    assert last_only[0, 2 * V:3 * V].sum() == len(codes) <= whole[0, 2 * V:3 * V].sum()
    assert set(np.flatnonzero(last_only[0, 3 * V:])) == set(codes.tolist())
