"""`dvc plots` HTML that renders offline: DVC's default page loads Vega from a CDN, so a
result opened on a machine without network shows nothing. This writes an HTML template with
Vega, Vega-Lite and Vega-Embed inlined (the bundle that ships inside vl-convert-python), which
`dvc plots show/diff --html-template` (or `plots.html_template` in .dvc/config) fills in.

    python -m ehrseq.ops.offline_plots .dvc/plots-offline.html
    dvc plots diff main --html-template .dvc/plots-offline.html -o plots-diff
"""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>DVC plots (offline)</title>
<script>{bundle}</script>
<style>table {{ border-spacing: 15px; }} body {{ font-family: sans-serif; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def write_template(path: str | Path) -> Path:
    import vl_convert

    bundle = vl_convert.javascript_bundle()
    if "{plot_divs}" in bundle or "</script>" in bundle:
        raise RuntimeError("the Vega bundle cannot be inlined safely")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(TEMPLATE.format(bundle=bundle))
    tmp.replace(path)
    return path


if __name__ == "__main__":
    print(write_template(sys.argv[1] if len(sys.argv) > 1 else ".dvc/plots-offline.html"))
