"""Stage ``code``: the code each stage script runs, written to stage-code/<script>.md5.

One line per file, ``<md5>  <path>``: the script, then every ``ehrseq`` module it imports,
transitively, lazy imports included (src/ehrseq/imports.py). Each stage of dvc.yaml depends on
its script's listing instead of on each module, so an edit re-runs exactly the stages whose
code changed, the dependency lists cannot drift from the imports, and `dvc exp show` shows one
column per stage script. The listings are small and tracked by git (``cache: false``), so a
fresh clone has them and re-runs nothing. Check one by hand: ``md5sum -c stage-code/X.md5``.
"""

from __future__ import annotations

from pathlib import Path

from ehrseq.imports import listing
from ehrseq.io import atomic_outputs, run_stage

OUT = Path("stage-code")
SRC = Path("src")   # this checkout's package, whichever one is installed


def scripts() -> list[Path]:
    """Every stage script but this one."""
    return sorted(p for p in Path("stages").glob("*.py") if p.name != "code.py")


def main() -> None:
    todo = scripts()
    finals = [OUT / f"{s.stem}.md5" for s in todo]
    with atomic_outputs(*finals) as temps:
        for script, tmp in zip(todo, temps, strict=True):
            tmp.write_text(listing(script, src=SRC.resolve()))
    print(f"code: {len(todo)} stage scripts listed in {OUT}/")


if __name__ == "__main__":
    run_stage(main)
