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
def value_brute(seqs, index, lm, keep, t0):
    """Last value and 365-day mean (as bin + 1) of each numeric code, by a loop."""
    from ehrseq.data.windows import value_tokens

    code_of, bin_of, names = value_tokens(seqs.vocab["tokens"])
    K = len(names)
    last = np.zeros((len(index), K))
    best = np.full((len(index), K), np.inf)
    tot, cnt = np.zeros((len(index), K)), np.zeros((len(index), K))
    for i, (p, k, w, t) in enumerate(zip(index, lm, keep, t0, strict=True)):
        first_visit = seqs.patient_offsets[p]
        for v in range(first_visit + k - w, first_visit + k):
            age = max(t - seqs.visit_time[v], 0.0)
            for c in seqs.codes[seqs.visit_offsets[v]:seqs.visit_offsets[v + 1]]:
                j = code_of[c]
                if j < 0:
                    continue
                if age < best[i, j]:       # ties: the first in (visit, token) order
                    best[i, j], last[i, j] = age, bin_of[c]
                if age <= 365:
                    tot[i, j] += bin_of[c]
                    cnt[i, j] += 1
    return np.hstack([last, np.divide(tot, cnt, out=np.zeros_like(tot), where=cnt > 0)])


@pytest.mark.parametrize("windows", [(30.0, 365.0), (7.0,)])
def test_matches_a_loop_over_events(windows):
    seqs = toy_sequences(60, vocab_size=25, max_visits=9, max_codes=4, seed=4)
    for i, name in zip(range(10, 16), ["L/a:q0", "L/a:q1", "L/a:q2", "L/b:q0", "L/b:q3",
                                        "L/c"], strict=True):
        seqs.vocab["tokens"][i] = name            # two numeric codes a, b; c is a plain code
    rng = np.random.default_rng(0)
    index = rng.choice(seqs.n_patients, 40)
    index = index[seqs.n_visits[index] >= 1]
    lm = np.array([rng.integers(1, seqs.n_visits[p] + 1) for p in index])
    keep = np.array([rng.integers(1, k + 1) for k in lm])           # the input window
    last = seqs.patient_offsets[index] + lm - 1
    t0 = seqs.visit_time[last] + rng.uniform(0, 60, len(index))    # landmark after the visit
    got = window_features(seqs, index, lm, keep, t0, windows).toarray()
    want = np.hstack([brute(seqs, index, lm, keep, t0, windows),
                      value_brute(seqs, index, lm, keep, t0)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert (want[:, -4:] > 0).any() and (want[:, -4:] % 1 != 0).any()   # values, means
    names = window_feature_names(seqs.vocab["tokens"], windows)
    assert len(names) == got.shape[1] and names[-4:] == ["last_value:L/a", "last_value:L/b",
                                                           "mean_365d:L/a", "mean_365d:L/b"]


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
