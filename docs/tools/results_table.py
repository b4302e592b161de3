"""The README's results table, generated from the committed benchmark pages, never typed in.

Every benchmark page written by ``docs/tools/benchmark_page.py`` has a JSON sidecar beside it
(``docs/<page>.json``, ``"kind": "benchmark"``) with the run's headline, read from its outputs:
the outcome, the cohort and its test split (patients, landmarks, events), the oracle's and the best count model's C, the
sequence model with the lowest validation loss (chosen on validation, never on test) and its
paired ΔC against the best count model, the commit and the date. This script puts one row per
page between the ``<!-- results:begin -->`` and ``<!-- results:end -->`` markers of README.md.

    python docs/tools/results_table.py           # rewrite the table in README.md
    python docs/tools/results_table.py --check   # exit 1 when README.md's table is stale

tests/test_docs.py fails when the README's table differs from what this script generates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _c(d: dict | None) -> str:
    return "n/a" if not d else f"{d['c']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"


def sidecars(docs: Path) -> list[dict]:
    """Every benchmark page's headline, largest cohort first, then by outcome."""
    rows = []
    for f in sorted(docs.glob("*.json")):
        d = json.loads(f.read_text())
        if isinstance(d, dict) and d.get("kind") == "benchmark":
            rows.append(d)
    return sorted(rows, key=lambda d: (-d["patients"], d["outcome"], d["page"]))


def render(docs: Path = ROOT / "docs") -> str:
    """The table (Markdown) for the benchmark pages under ``docs``."""
    lines = ["| outcome | patients (test: patients, landmarks, events) | oracle C | "
             "best count model C "
             "(chosen on validation) | best sequence model C (lowest validation loss) | "
             "sequence − count, paired ΔC [95% CI] | page (date, commit) |",
             "|---|---|---|---|---|---|---|"]
    for d in sidecars(docs):
        seq, best = d.get("best_sequence"), d["best_count"]
        diff = "n/a" if not seq else \
            f"**{seq['vs_best_count']:+.3f}** [{seq['vs_lo']:+.3f}, {seq['vs_hi']:+.3f}]"
        lines.append(
            f"| {d['outcome']} | {d['patients']:,} ({d['test_patients']}, "
            f"{d['test_landmarks']:,}, {d['test_events']}) "
            f"| {_c(d.get('oracle'))} | {best['model']} {_c(best)} | "
            f"{'n/a' if not seq else seq['model'] + ' ' + _c(seq)} | {diff} | "
            f"[{d['page']}](docs/{d['page']}) ({d['date']}, {d['commit']}) |")
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md: the markers {BEGIN} and {END} are missing")
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md is stale")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    a = ap.parse_args(argv)
    text = a.readme.read_text()
    new = replace_block(text, render(a.readme.parent / "docs"))
    if a.check:
        if new != text:
            print(f"{a.readme}: the results table is stale; run python "
                  "docs/tools/results_table.py", file=sys.stderr)
            return 1
        return 0
    a.readme.write_text(new)
    print(f"{a.readme}: {len(sidecars(a.readme.parent / 'docs'))} benchmark pages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
