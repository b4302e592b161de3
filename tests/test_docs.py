"""Docs that the code can contradict: the stage diagram of docs/pipeline.md against dvc.yaml."""

import re

import yaml
from conftest import ROOT, script


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def dag_edges() -> set[tuple[str, str]]:
    """Stage edges of dvc.yaml: a -> b when b depends on an output of a (or a path inside it)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    body = {name: s.get("do", s) for name, s in stages.items()}   # foreach: under do:
    outs = {name: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))
            for name, s in body.items()}
    edges = set()
    for b, s in body.items():
        for dep in _paths(s.get("deps")):
            for a, paths in outs.items():
                for o in paths:
                    o = re.sub(r"/\$\{item\}.*", "", o)     # foreach outputs: their folder
                    if a != b and (dep == o or dep.startswith(o.rstrip("/") + "/")
                                   or o.startswith(dep.rstrip("/") + "/")):
                        edges.add((a, b))
    return edges


def test_readme_diagram_has_every_edge_of_the_dag():
    page = (ROOT / "docs/pipeline.md").read_text()   # moved from the README (issue 28)
    block = page[page.index("```mermaid"):]
    block = block[:block.index("```", 3)]
    drawn = set(re.findall(r"^\s*(\w+) --> (\w+)\s*$", block, re.M))
    # stage `code` feeds every stage its code listing: said once in the page, not drawn
    assert "stage `code`" in page
    want = {(a, b) for a, b in dag_edges() if a != "code"}
    assert want, "no edges parsed from dvc.yaml"
    assert want <= drawn, f"missing from the diagram of docs/pipeline.md: {sorted(want - drawn)}"
    assert drawn <= want, f"drawn but not in dvc.yaml: {sorted(drawn - want)}"


def _results_table():
    return script("docs/tools/results_table.py")


def test_readme_results_table_is_generated_from_the_pages():
    """The README's results table is what docs/tools/results_table.py makes of the committed
    benchmark pages' sidecars: a page added or regenerated without the table fails here."""
    rt = _results_table()
    assert rt.sidecars(ROOT / "docs"), "no benchmark page with a sidecar (docs/*.json)"
    assert rt.main(["--check"]) == 0, "README.md's results table is stale: run " \
        "python docs/tools/results_table.py"


def test_results_table_check_sees_a_stale_number(tmp_path):
    import json
    import shutil

    rt = _results_table()
    (tmp_path / "docs").mkdir()
    for f in (ROOT / "docs").glob("*.json"):
        shutil.copy(f, tmp_path / "docs" / f.name)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert rt.main(["--check", "--readme", str(tmp_path / "README.md")]) == 0
    side = next(f for f in (tmp_path / "docs").glob("*.json")
                if json.loads(f.read_text()).get("kind") == "benchmark")
    d = json.loads(side.read_text())
    d["best_count"]["c"] += 0.01
    side.write_text(json.dumps(d))
    assert rt.main(["--check", "--readme", str(tmp_path / "README.md")]) == 1


def test_readme_fits_on_a_screen():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
