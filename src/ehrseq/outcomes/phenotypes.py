"""Phenotype labels from Synthea itself: which chronic disease each patient had by the landmark.

A second, independent ground truth for patient subtypes (beside the planted synthetic
subtypes): the chronic-disease modules that Synthea ran for a patient leave condition records
with fixed SNOMED codes. A patient *has* a phenotype at the landmark when a ``condition``
event with one of the group's codes was known at or before the landmark time (its
``known_time``, never before its encounter's start: :mod:`ehrseq.data.visits`), which covers
every such record in the model inputs.

Groups (:data:`GROUPS`; a group matches any of its codes, across Synthea versions):

==============  =================================================================
ckd             chronic kidney disease stages 1-4, end-stage renal disease,
                disorder of kidney due to diabetes
cardiovascular  hypertension, ischemic heart disease, myocardial infarction (incl.
                STEMI/NSTEMI, history of MI), chronic congestive heart failure,
                atrial fibrillation, stroke
diabetes        type 2 diabetes or prediabetes
respiratory     COPD (chronic obstructive bronchitis, emphysema), asthma,
                childhood asthma
obesity         BMI 30+ or BMI 40+ finding
==============  =================================================================

One label per patient (:func:`phenotype_labels`) by priority, in the order above: the most
advanced disease wins (in Synthea CKD follows diabetes or hypertension, and cardiovascular
disease outranks the metabolic precursors), ``none`` when no group matches. The full
combination (e.g. ``cardiovascular+diabetes+obesity``) is kept as ``pattern`` for the
characterisation tables; it is too fragmented on small cohorts to serve as a label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .landmarks import records_by_landmark

GROUPS: dict[str, tuple[str, ...]] = {
    "ckd": ("431855005", "431856006", "433144002", "431857002", "46177005", "127013003"),
    "cardiovascular": ("59621000", "38341003", "414545008", "22298006", "401303003",
                       "401314000", "399211009", "88805009", "49436004", "230690007"),
    "diabetes": ("44054006", "15777000", "714628002"),
    "respiratory": ("13645005", "185086009", "87433001", "195967001", "233678006"),
    "obesity": ("162864005", "408512008"),
}
PRIORITY = tuple(GROUPS)
"""Label priority: the first group a patient has is its label."""
NONE = "none"
DEFAULT_KINDS = ("condition", "medication", "procedure", "observation", "immunization",
                 "allergy", "careplan", "device")


def condition_visits(events: str | Path, event_kinds=None,
                     codes: dict[str, tuple[str, ...]] | None = None) -> pd.DataFrame:
    """Condition records of the phenotype codes with the time they became known.

    Returns ``patient, code, known_time`` (days since 1970-01-01 UTC; never before the record's
    encounter start, :mod:`ehrseq.data.visits`) for every ``condition`` event in
    ``events.parquet`` whose code is in ``codes`` (default :data:`GROUPS`).
    """
    from ..data.visits import condition_records

    codes = codes or GROUPS
    kinds = sorted(set(event_kinds or DEFAULT_KINDS) | {"condition"})
    wanted = sorted({c for cs in codes.values() for c in cs})
    rows = condition_records(events, kinds, wanted)
    return pd.DataFrame({"patient": rows["patient"], "code": rows["code"],
                         "known_time": rows["t_us"].to_numpy(np.float64) / 86400e6})


def phenotype_flags(conditions: pd.DataFrame, patient_ids, landmark_time,
                    codes: dict[str, tuple[str, ...]] | None = None) -> pd.DataFrame:
    """Boolean ``[n_landmarks, n_groups]`` frame: group present by each landmark.

    ``conditions``: ``patient, code, known_time`` (from :func:`condition_visits`);
    ``patient_ids`` and ``landmark_time`` (days since epoch) give one row per landmark, in
    that order (a patient may have several). A record counts when it was known at or before
    the landmark.
    """
    codes = codes or GROUPS
    pid = np.asarray(patient_ids, dtype=object)
    lm = np.asarray(landmark_time, np.float64)
    out = pd.DataFrame(False, index=range(len(pid)), columns=list(codes))
    if len(conditions) == 0 or len(pid) == 0:
        return out
    ids, owner = np.unique(pid.astype(str), return_inverse=True)   # landmark -> patient
    rec_patient = pd.Index(ids).get_indexer(conditions["patient"].astype(str).to_numpy())
    rec, row = records_by_landmark(rec_patient, owner)     # every record at every landmark
    code = conditions["code"].astype(str).to_numpy()[rec]
    pre = conditions["known_time"].to_numpy(np.float64)[rec] <= lm[row]
    for g, cs in codes.items():          # one pass per group (a handful), not per event
        hit = pre & np.isin(code, cs)
        col = np.zeros(len(pid), bool)
        col[row[hit]] = True
        out[g] = col
    return out


def phenotype_labels(flags: pd.DataFrame, priority=PRIORITY) -> pd.DataFrame:
    """``label`` (the first group of ``priority`` present, else ``none``) and ``pattern``
    (all groups present, joined by ``+`` in priority order, else ``none``) per patient."""
    f = flags[list(priority)].to_numpy(bool)
    names = np.array(list(priority) + [NONE], dtype=object)
    first = np.where(f.any(1), f.argmax(1), len(priority))
    pattern = ["+".join(names[:-1][r]) or NONE for r in f]   # strings: one join per patient
    return pd.DataFrame({"label": names[first], "pattern": pattern}, index=flags.index)


def load_phenotypes(events: str | Path, patient_ids, landmark_time,
                    event_kinds=None) -> pd.DataFrame:
    """Flags, ``label`` and ``pattern`` per patient (rows in the order of ``patient_ids``)."""
    flags = phenotype_flags(condition_visits(events, event_kinds), patient_ids, landmark_time)
    return pd.concat([flags, phenotype_labels(flags)], axis=1)
