"""The library's layout, measured: import cycles, upward imports, stage-script sizes, and
whether every stage depends on the listing of the code it runs (stage-code/, stage ``code``).

    python docs/tools/layout.py            # print the report (exit 1 on a cycle, an upward import
                                           # or a stage whose code dependency is not exact)
    python docs/tools/layout.py /tmp/old   # the same for another checkout (e.g. a git worktree)

Layers, lowest first (a module may import its own layer or lower ones, never higher):

    params io repro plots imports  <  survival  <  data  <  outcomes  <  models  <  train
    <  evaluate  <  ops

Imports are read statically (``ast``, src/ehrseq/imports.py: the same closure keys the training
checkpoints), function-level imports included, so a lazy import that runs upward counts too.
tests/test_layout.py runs the same checks.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ehrseq import imports

if __name__ == "__main__" and sys.argv[1:] in (["-h"], ["--help"]):
    print(__doc__)
    sys.exit(0)
ROOT = Path(sys.argv[1]).resolve() if __name__ == "__main__" and len(sys.argv) > 1 \
    else Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
LAYERS = [("params", "io", "repro", "plots", "imports"), ("survival",), ("data",), ("outcomes",),
          ("models",), ("train",), ("evaluate",), ("ops",)]


def modules() -> dict[str, Path]:
    return imports.modules(SRC)


def imports_of(path: Path, mod: str | None = None) -> set[str]:
    """ehrseq modules that ``path`` imports (any nesting level)."""
    return imports.imports_of(path, SRC, mod)


def graph() -> dict[str, set[str]]:
    return imports.graph(SRC)


def layer(mod: str) -> int:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return len(LAYERS)   # the package itself or an unknown top level: highest


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a lower layer imports a higher one."""
    return sorted((a, b) for a, bs in g.items() for b in bs
                  if a.count(".") >= 1 and b.count(".") >= 1 and layer(b) > layer(a))


def closure(path: Path) -> set[str]:
    """Every ehrseq module a script needs, transitively."""
    return imports.closure(path, SRC)


def stage_deps() -> dict[str, tuple[Path, set[str]]]:
    """stage -> (its script, the files it lists as deps) from dvc.yaml."""
    import yaml

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in spec.items():
        st = st.get("do", st)
        script = next(w for w in st["cmd"].split() if w.startswith("stages/"))
        out[name] = (ROOT / script, {str(d) for d in st.get("deps", [])})
    return out


def missing_deps() -> dict[str, list[str]]:
    """Per stage, what keeps its code dependency from being exact: it must depend on its own
    script's listing (stage-code/<script>.md5, written by stage ``code``) and list no code file
    itself, and stage ``code`` must write one listing per stage script (a missing one is never
    written, so `dvc repro` stops; an extra one is a stale file)."""
    import yaml

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    bad = {}
    for name, (script, deps) in stage_deps().items():
        if name == "code":
            continue
        want = f"stage-code/{script.stem}.md5"
        wrong = [d for d in deps if d.startswith(("src/", "stages/", "stage-code/")) and d != want]
        if want not in deps or wrong:
            bad[name] = sorted(set(wrong) | ({want} - deps))
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in spec["code"]["outs"]}
    scripts = {f"stage-code/{p.stem}.md5" for p in (ROOT / "stages").glob("*.py")
               if p.name != "code.py"}
    if outs != scripts:
        bad["code"] = sorted(outs ^ scripts)
    return bad


def stale_deps() -> dict[str, list[str]]:
    """Per stage, the listing it depends on that names other files than its script imports
    today (an import added or removed since stage ``code`` last ran; `dvc repro code` re-makes
    the listings, and `dvc repro` does so first). Contents are DVC's to compare: an edit to a
    listed file shows in `dvc status` as stage ``code`` changed."""
    def files(text: str) -> list[str]:
        return [line.split("  ", 1)[1] for line in text.splitlines()]

    bad = {}
    for name, (script, _) in stage_deps().items():
        f = ROOT / "stage-code" / f"{script.stem}.md5"
        if name != "code" and (not f.exists() or files(f.read_text()) != files(
                imports.listing(script, ROOT, SRC))):
            bad[name] = [str(f.relative_to(ROOT))]
    return bad


def main() -> int:
    g = graph()
    cyc, up, miss, stale = cycles(g), upward(g), missing_deps(), stale_deps()
    print(f"{len(g)} modules, {sum(map(len, g.values()))} imports")
    print(f"import cycles: {len(cyc)}")
    for c in cyc:
        print("  " + " <-> ".join(c))
    print(f"upward imports (a lower layer importing a higher one): {len(up)}")
    for a, b in up:
        print(f"  {a} -> {b}")
    print("stage scripts (lines):")
    for p in sorted((ROOT / "stages").glob("*.py")):
        print(f"  {p.name:24s} {len(p.read_text().splitlines()):4d}")
    print(f"stages whose code dependency is not their script's listing: {len(miss)}")
    for s, files in miss.items():
        print(f"  {s}: {', '.join(files)}")
    print(f"stage-code/ listings naming other files than the imports today: {len(stale)}")
    for s, files in stale.items():
        print(f"  {s}: {', '.join(files)}")
    return 1 if cyc or up or miss or stale else 0


if __name__ == "__main__":
    sys.exit(main())
