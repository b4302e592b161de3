"""Check that the committed dvc.lock is what a fresh clone computes, for the data stages.

A fresh ``git clone`` of a commit (no workspace output, no DVC cache, no run-cache of the
source tree is reused) runs ``dvc repro --force --no-run-cache`` of the data stages
(synthesize, ingest, sequences, outcomes); their output hashes are compared with the lock
committed at that commit. Per stage it prints:

- ``lock``: whether the committed entry describes the commit at all: its code deps and params
  equal the clone's files (``stale`` otherwise: the lock was committed without re-running the
  stage, and a mismatch says nothing about the machine);
- ``outputs``: ``match`` or ``MISMATCH`` with each differing output (committed and recomputed
  md5 and size; for a directory, the differing files when the committed ``.dir`` manifest is
  in a local DVC cache, ``--cache``), and whether the stage's own inputs already differed
  (then the mismatch is inherited from the stage before it).

The data stages are meant to be byte-identical on every machine (docs/architecture.md,
"Reproducibility"); model stages are not checked (BLAS/vector kernels make their floats
machine-dependent).

    python bench/check_lock.py                       # HEAD of this repository
    python bench/check_lock.py --repo DIR --rev main --stages synthesize ingest
    python bench/check_lock.py --keep /tmp/clone     # keep the clone (must not exist)
    make check-lock
    python bench/check_lock.py --compare /tmp/clone1 /tmp/clone2   # two finished checkouts

``--compare A B`` runs nothing: it compares the dvc.lock outputs of two checkouts that each ran
``dvc repro`` (e.g. two ``bench/pipeline.py --keep`` clones of one commit), every stage, model
stages included. A differing directory lists its differing files (manifests from both caches);
a differing JSON file whose only differing keys are timings (seconds, throughput, peak memory,
the machine's load) is reported as ``timing only``.

With the default params (200 generated patients) the four stages take a few minutes on a
2-core machine. Exit status: 0 every stage matches, 1 a mismatch or a stale entry, 2 the check
could not run (no dvc.lock, ``dvc repro`` failed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("synthesize", "corpus", "ingest", "sequences", "outcomes")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lookup(params: dict, key: str):
    node = params
    for k in key.split("."):
        if not isinstance(node, dict) or k not in node:
            return "<absent>"
        node = node[k]
    return node


def produced_paths(lock: dict) -> set[str]:
    """Every output path of every stage in the lock (deps on them are data, not code)."""
    return {o["path"] for s in lock.values() for o in s.get("outs", [])}


def stale_entries(entry: dict, repo: Path, produced: set[str]) -> list[str]:
    """Code deps and params of a committed lock entry that differ from the commit's files."""
    out = []
    tracked = set(git(repo, "ls-files").split())   # stage code's listings: outputs in git
    for d in entry.get("deps", []):
        path = d["path"]
        if path not in tracked and (path in produced or any(
                path.startswith(p.rstrip("/") + "/") for p in produced)):
            continue
        f = repo / path
        if f.is_dir():
            continue   # a folder of code: not compared here (its listings are, below)
        if not f.is_file():
            out.append(f"{path} (missing)")
        elif md5_file(f) != d.get("md5"):
            out.append(path)
        elif path.startswith("stage-code/"):   # the listing against the code it lists
            for line in f.read_text().splitlines():
                md5, listed = line.split("  ", 1)
                if not (repo / listed).is_file() or md5_file(repo / listed) != md5:
                    out.append(f"{path} (lists {listed} as it was)")
                    break
    for pfile, values in (entry.get("params") or {}).items():
        current = yaml.safe_load((repo / pfile).read_text()) if (repo / pfile).is_file() else {}
        for key, value in values.items():
            if lookup(current or {}, key) != value:
                out.append(f"{pfile}:{key}")
    return out


def dir_manifest(md5: str, caches: list[Path]) -> dict[str, str] | None:
    """relpath -> md5 of a committed directory output, from a DVC cache that holds it."""
    for cache in caches:
        for f in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):
            if f.is_file():
                return {e["relpath"]: e["md5"] for e in json.loads(f.read_text())}
    return None


def compare_outs(old: dict, new: dict, caches: list[Path]) -> list[str]:
    """One line per output whose hash differs between the committed and recomputed entry."""
    lines = []
    new_outs = {o["path"]: o for o in new.get("outs", [])}
    for o in old.get("outs", []):
        n = new_outs.get(o["path"])
        if n is None:
            lines.append(f"{o['path']}: not produced")
            continue
        if n.get("md5") == o.get("md5"):
            continue
        line = (f"{o['path']}: committed {o.get('md5')} ({o.get('size')} B), "
                f"recomputed {n.get('md5')} ({n.get('size')} B)")
        if str(o.get("md5", "")).endswith(".dir"):
            a = dir_manifest(o["md5"], caches)
            b = dir_manifest(n["md5"], caches)
            if a is not None and b is not None:
                files = sorted(f for f in a.keys() | b.keys() if a.get(f) != b.get(f))
                line += f"; files: {', '.join(files)}"
            else:
                line += "; the committed manifest is in no local DVC cache (--cache, dvc pull)"
        lines.append(line)
    return lines


def input_changes(old: dict, new: dict, produced: set[str]) -> list[str]:
    """Data deps (outputs of earlier stages) whose recomputed hash differs from the lock's."""
    new_deps = {d["path"]: d.get("md5") for d in new.get("deps", [])}
    return [d["path"] for d in old.get("deps", [])
            if d["path"] in produced and new_deps.get(d["path"]) != d.get("md5")]


TIMING = ("seconds", "_per_s", "peak_memory", "wall_time_s", "train_time_s", "load")


def _cache_file(md5: str, caches: list[Path]) -> Path | None:
    for cache in caches:
        for f in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):
            if f.is_file():
                return f
    return None


def _json_keys_differ(a: Path | None, b: Path | None) -> list[str] | None:
    """Keys whose values differ between two JSON files (nested keys joined by '.'), or None
    when either is not readable JSON."""
    def flat(obj, pre=""):
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                out.update(flat(v, f"{pre}{k}."))
            return out
        return {pre[:-1]: obj}
    try:
        fa, fb = flat(json.loads(a.read_text())), flat(json.loads(b.read_text()))
    except (AttributeError, OSError, ValueError):
        return None
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def compare_checkouts(a: Path, b: Path, stages: list[str] | None) -> int:
    """Print per stage whether two checkouts' dvc.lock outputs are identical (see --compare)."""
    la = yaml.safe_load((a / "dvc.lock").read_text())["stages"]
    lb = yaml.safe_load((b / "dvc.lock").read_text())["stages"]
    caches = [a / ".dvc" / "cache", b / ".dvc" / "cache"]
    bad = 0
    for s in stages or list(la):
        if s not in lb:
            print(f"{s}: only in {a}")
            bad += 1
            continue
        outs_b = {o["path"]: o for o in lb[s].get("outs", [])}
        lines = []
        for o in la[s].get("outs", []):
            n = outs_b.get(o["path"], {})
            if n.get("md5") == o.get("md5"):
                continue
            if str(o.get("md5", "")).endswith(".dir"):
                ma, mb = dir_manifest(o["md5"], caches), dir_manifest(n.get("md5", ""), caches)
                if ma is None or mb is None:
                    lines.append(f"{o['path']}: differs (a manifest is in no cache)")
                    continue
                files = {f: (ma.get(f), mb.get(f)) for f in ma.keys() | mb.keys()
                         if ma.get(f) != mb.get(f)}
                pairs = {f"{o['path']}/{f}": (x, y) for f, (x, y) in files.items()}
            else:
                pairs = {o["path"]: (o.get("md5"), n.get("md5"))}
            for path, (x, y) in sorted(pairs.items()):
                keys = _json_keys_differ(_cache_file(x or "", caches), _cache_file(y or "", caches)) \
                    if path.endswith(".json") else None
                if keys is not None and all(any(t in k for t in TIMING) for k in keys):
                    lines.append(f"{path}: timing only ({', '.join(keys[:4])}"
                                 f"{', ...' if len(keys) > 4 else ''})")
                else:
                    lines.append(f"{path}: DIFFERS" + (f" ({', '.join(keys[:6])})" if keys else ""))
        real = [ln for ln in lines if "timing only" not in ln]
        bad += bool(real)
        print(f"{s}: {'identical' if not lines else 'identical but timings' if not real else 'DIFFERS'}"
              f" ({len(la[s].get('outs', []))} outputs)")
        for ln in lines:
            print(f"    {ln}")
    return 1 if bad else 0


def machine() -> str:
    import numpy as np

    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:   # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    simd = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    blas = ""
    try:
        import threadpoolctl

        blas = ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                         for i in threadpoolctl.threadpool_info())
    except ImportError:
        pass
    flags = ""
    try:
        cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                      if ln.startswith("model name")), "")
        fl = next((ln.split(":", 1)[1].split() for ln in cpu.splitlines()
                   if ln.startswith("flags")), [])
        flags = f"{model}; " + " ".join(f for f in ("avx2", "fma", "avx512f") if f in fl)
    except OSError:
        flags = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPUs ({flags}); NumPy {np.__version__} dispatch "
            f"{simd or 'baseline'}; BLAS {blas or 'unknown'}; Python {platform.python_version()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="repository to clone (default: this)")
    ap.add_argument("--rev", default="HEAD", help="commit to check (default: HEAD)")
    ap.add_argument("--stages", nargs="+", default=list(DATA_STAGES), metavar="STAGE",
                    help=f"stages to recompute (default: {' '.join(DATA_STAGES)})")
    ap.add_argument("--cache", type=Path, action="append", default=[],
                    help="a DVC cache holding committed directory manifests (default: the "
                         "source repository's .dvc/cache)")
    ap.add_argument("--keep", type=Path, help="clone here and keep it (must not exist)")
    ap.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"),
                    help="compare two checkouts that ran dvc repro (runs nothing)")
    args = ap.parse_args()
    if args.compare:
        a, b = (p.resolve() for p in args.compare)
        print(f"{a} vs {b}\n{machine()}\n")
        return compare_checkouts(a, b, None if args.stages == list(DATA_STAGES) else args.stages)

    repo = args.repo.resolve()
    sha = git(repo, "rev-parse", args.rev)
    work = args.keep.resolve() if args.keep else \
        Path(tempfile.mkdtemp(prefix="check-lock-")) / "repo"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo), str(work)], check=True)
    try:
        git(work, "checkout", "-q", sha)
        if not (work / "dvc.lock").is_file():
            print(f"{args.rev} ({sha[:8]}): no dvc.lock committed", file=sys.stderr)
            return 2
        committed = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
        missing = [s for s in args.stages if s not in committed]
        if missing:
            print(f"not in the committed dvc.lock: {', '.join(missing)}", file=sys.stderr)
            return 2
        produced = produced_paths(committed)
        stale = {s: stale_entries(committed[s], work, produced) for s in args.stages}

        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "PYTHONPATH": str(work / "src"), "DVC_NO_ANALYTICS": "1"}
        t0 = time.monotonic()
        res = subprocess.run(["dvc", "repro", "--force", "--no-run-cache", *args.stages],
                             cwd=work, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - t0
        if res.returncode:
            print((res.stdout + res.stderr)[-4000:], file=sys.stderr)
            print(f"dvc repro failed (exit {res.returncode})", file=sys.stderr)
            return 2
        recomputed = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
        caches = [*args.cache, work / ".dvc" / "cache"]
        try:
            src_cache = subprocess.run(["dvc", "cache", "dir"], cwd=repo, env=env,
                                       capture_output=True, text=True).stdout.strip()
            if src_cache:
                caches.append(Path(src_cache))
        except OSError:
            pass

        print(f"commit {sha[:8]} of {repo}; dvc repro of {' '.join(args.stages)} in a fresh "
              f"clone: {seconds:.0f} s\n{machine()}\n")
        width = max(map(len, args.stages))
        bad = 0
        for s in args.stages:
            diffs = compare_outs(committed[s], recomputed[s], caches)
            lock_state = "stale: " + ", ".join(stale[s]) if stale[s] else "describes the commit"
            verdict = "match" if not diffs else "MISMATCH"
            bad += bool(diffs) + bool(stale[s])
            print(f"{s:<{width}}  lock {lock_state}; outputs {verdict} "
                  f"({len(committed[s].get('outs', []))} outputs)")
            inherited = input_changes(committed[s], recomputed[s], produced)
            if diffs and inherited:
                print(f"{'':<{width}}    its inputs already differ: {', '.join(inherited)}")
            for line in diffs:
                print(f"{'':<{width}}    {line}")
        return 1 if bad else 0
    finally:
        if not args.keep:
            shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
