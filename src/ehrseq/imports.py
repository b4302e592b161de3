"""The package's import graph, read statically (``ast``), and the fingerprint of the code a
script runs.

- :func:`closure` is every ``ehrseq`` module a script needs, transitively, function-level
  (lazy) imports included. :func:`listing` writes it down with each file's md5: stage ``code``
  keeps one listing per stage script in stage-code/, and each stage depends on its own.
- :func:`code_fingerprint` hashes that same set (the script and its closure) and is part of
  every training run key (:func:`ehrseq.train.recipe.train_stage`): a change to the code that
  trains starts a fresh run instead of resuming a checkpoint the old code wrote. Each file
  counts by its syntax tree (``ast.dump``), so a comment or a reformatting keeps the key (the
  same program trains the same weights) while any change to what runs, docstrings included,
  changes it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PKG = "ehrseq"
SRC = Path(__file__).resolve().parents[1]
"""The folder that holds this package (``src/`` in a checkout)."""


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package under ``src``, by dotted name."""
    return {module_name(p, src): p for p in sorted((src / PKG).rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # ``from pkg import name`` may import a submodule ``pkg.name``
    return [target] + [f"{target}.{a.name}" for a in node.names]


def imports_of(path: Path, src: Path = SRC, mod: str | None = None) -> set[str]:
    """Package modules that ``path`` imports (any nesting level)."""
    known = modules(src)
    path = Path(path)
    mod = mod or (module_name(path, src) if path.is_relative_to(src) else "__main__")
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(mod, is_pkg, node)
        found.update(n for n in names if n in known and n != mod)
    return found


def graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the package modules it imports."""
    return {m: imports_of(p, src, m) for m, p in modules(src).items()}


def closure(script: Path, src: Path = SRC) -> set[str]:
    """Every package module ``script`` needs, transitively."""
    g = graph(src)
    todo, seen = list(imports_of(script, src)), set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += list(g.get(m, ()))
    return seen


@lru_cache(maxsize=8)
def _fingerprint(script: str, src: str) -> str:
    mods = modules(Path(src))
    h = hashlib.sha256()
    files = [("<script>", Path(script))] + [(m, mods[m]) for m in sorted(closure(Path(script),
                                                                                Path(src)))]
    for name, path in files:
        tree = ast.parse(path.read_text(), str(path))
        h.update(f"{name}\0".encode())
        h.update(hashlib.sha256(ast.dump(tree).encode()).digest())
    return h.hexdigest()


def code_fingerprint(script: str | Path | None = None, src: str | Path = SRC) -> str:
    """SHA-256 of the code ``script`` runs (e.g. ``stages/train_survival.py``): its own syntax
    tree and that of every package module in its :func:`closure`. Without a script (an
    interactive session, ``python -c``) the package's training recipe and what it imports
    stand for it. ``src``: the folder holding the package (default: this one's)."""
    if script is None or not Path(script).is_file():
        script = Path(src) / PKG / "train/recipe.py"
    return _fingerprint(str(Path(script).resolve()), str(Path(src).resolve()))


def listing(script: str | Path, root: str | Path = ".", src: Path = SRC) -> str:
    """The code ``script`` runs, one ``<md5>  <path>`` line per file (``md5sum`` format, so
    ``md5sum -c`` checks it): the script, then every package module of its :func:`closure`,
    paths relative to ``root``. The ``code`` stage writes one per stage script into
    stage-code/ and each stage depends on its own: a change to a module re-runs exactly the
    stages that import it, and `dvc exp show` shows one column per stage script instead of
    one per module (issue 28)."""
    root = Path(root).resolve()
    mods = modules(src)
    needed = closure(Path(script), src)
    # importing a module runs its parent packages' __init__ too
    needed |= {".".join(m.split(".")[:i]) for m in needed for i in range(1, m.count(".") + 1)}
    files = [Path(script)] + [mods[m] for m in sorted(needed) if m in mods]
    lines = []
    for f in files:
        path = Path(f).resolve()
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel.as_posix()}\n")
    return "".join(lines)
