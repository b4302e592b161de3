"""`dvc plots diff` renders offline: the HTML carries Vega inline (no CDN), and headless
Chromium, with no network, draws the charts (a screenshot with real marks in it)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ehrseq.ops.offline_plots import write_template

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def sh(cmd, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res


@pytest.fixture
def plots_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "plots").mkdir(parents=True)
    sh(["git", "init", "-q"], repo)
    sh(["dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text("plots:\n  - plots/loss.csv:\n      x: epoch\n      y: loss\n")

    def write(scale):
        rows = "\n".join(f"{e},{scale / (e + 1):.4f}" for e in range(10))
        (repo / "plots/loss.csv").write_text("epoch,loss\n" + rows + "\n")

    write(1.0)
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "a"], repo)
    write(2.0)  # the workspace differs from HEAD: a diff with two lines
    return repo


def test_template_has_no_cdn(tmp_path):
    html = write_template(tmp_path / "t.html").read_text()
    assert "{plot_divs}" in html and "cdn.jsdelivr" not in html and "vegaEmbed" in html


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (.ci/run installs it)")
def test_plots_diff_renders_offline_in_chromium(plots_repo, tmp_path):
    tpl = write_template(tmp_path / "offline.html")
    sh(["dvc", "plots", "diff", "HEAD", "--html-template", str(tpl), "-o", "out"], plots_repo)
    page = plots_repo / "out/index.html"
    text = page.read_text()
    assert "<script src" not in text and "cdn.jsdelivr" not in text  # nothing from a CDN
    shot = Path(os.environ.get("EHRSEQ_SCREENSHOT", tmp_path / "shot.png"))
    profile = tmp_path / "profile"
    sh([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--window-size=1000,800",
        "--virtual-time-budget=10000", f"--screenshot={shot}", page.as_uri()], tmp_path)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    drawn = (img < 200).mean()
    # a blank page (Vega failed to load) is all white; axes, labels and two lines are not
    assert drawn > 0.005, f"only {drawn:.4%} of the screenshot is drawn"
