"""The parameter reference (docs/params.md), generated from the params schema: one source.

    python -m ehrseq.ops.params_doc            # print it
    python -m ehrseq.ops.params_doc --write    # write docs/params.md
    python -m ehrseq.ops.params_doc --check    # exit 1 when docs/params.md is stale

Every key of params.yaml with its type, default, accepted range and description, read from
:mod:`ehrseq.params` itself: the field's annotation, default and constraints from pydantic, its
description from the docstring under it in the source (``ast``; pydantic does not keep those).
tests/test_params.py fails when the committed page differs from what this prints.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from .. import params as P

OUT = Path("docs/params.md")


def _docstrings() -> dict[tuple[str, str], str]:
    """(class name, field) -> the docstring written under the field in params.py."""
    tree = ast.parse(inspect.getsource(P))
    out = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        for a, b in zip(body, body[1:], strict=False):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and \
                    isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and \
                    isinstance(b.value.value, str):
                out[(cls.name, a.target.id)] = " ".join(b.value.value.split())
    return out


def _type(ann) -> str:
    text = repr(ann) if not isinstance(ann, type) else ann.__name__
    for junk in ("typing.", "datetime.", "ehrseq.params."):
        text = text.replace(junk, "")
    return text.replace("NoneType", "None")


def _default(field) -> str:
    if field.default_factory is not None:
        v = field.default_factory()
    else:
        v = field.default
    if isinstance(v, BaseModel):
        return ""
    return "null" if v is None else str(v).replace("True", "true").replace("False", "false")


def _limits(field) -> str:
    parts = []
    for m in field.metadata:
        for name, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, name, None) is not None:
                parts.append(f"{sym} {getattr(m, name)}")
    return ", ".join(parts)


def _section(model: type[BaseModel], prefix: str, docs: dict, rows: list) -> None:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        sub = next((a for a in (ann, *typing.get_args(ann)) if isinstance(a, type)
                    and issubclass(a, BaseModel)), None)
        if sub is not None:
            _section(sub, f"{key}.", docs, rows)
            continue
        what = docs.get((model.__name__, name), "")
        rows.append((key, _type(ann), _default(field), _limits(field), what))


def reference() -> str:
    docs = _docstrings()
    lines = ["# Parameter reference", "",
             "Generated from the params schema (`src/ehrseq/params.py`) by "
             "`python -m ehrseq.ops.params_doc --write`; do not edit by hand "
             "(tests/test_params.py fails when it is stale). params.yaml sets every key to "
             "these defaults. A section's own description is in its class docstring.", ""]
    for name, field in P.Params.model_fields.items():
        model = field.annotation
        lines += [f"## `{name}`", ""]
        doc = " ".join((model.__doc__ or "").split())
        if doc:
            lines += [doc, ""]
        rows: list = []
        _section(model, f"{name}.", docs, rows)
        lines += ["| key | type | default | accepted | description |", "|---|---|---|---|---|"]
        def cell(s: str) -> str:   # a "|" inside a table cell must be escaped
            return s.replace("|", "\\|")

        lines += [f"| `{k}` | `{cell(t)}` | {('`' + cell(d) + '`') if d else ''} | {lim} | "
                  f"{cell(w)} |" for k, t, d, lim, w in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help=f"write {OUT}")
    g.add_argument("--check", action="store_true", help=f"exit 1 when {OUT} is stale")
    a = ap.parse_args(argv)
    text = reference()
    if a.write:
        OUT.write_text(text)
    elif a.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python -m ehrseq.ops.params_doc --write",
                  file=sys.stderr)
            return 1
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
