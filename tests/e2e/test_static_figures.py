"""Figures that render everywhere, with Debian's Chromium drawing them through Kaleido: widgets.static_images()
puts a real image beside a figure's JSON, and make notebooks' executor (scripts/execute_notebooks.py) writes
notebooks with those images, without widget state or timing noise, and refuses a notebook over 1 MB."""
from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from widgets import static_images

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "execute_notebooks.py"
PLOTLY = "application/vnd.plotly.v1+json"

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def chromium():
    if shutil.which("chromium") is None:
        pytest.fail("Debian chromium is missing: `make test` installs it (APT_TEST_PACKAGES)")


@pytest.fixture
def plotly_defaults():
    import kaleido

    default, headers = pio.renderers.default, pio.defaults.headers
    yield
    pio.renderers.default, pio.defaults.headers = default, headers
    kaleido.stop_sync_server(silence_warnings=True)


def test_static_images_draws_the_figure_beside_its_json(plotly_defaults):
    figure = go.Figure(go.Bar(x=["a", "b"], y=[1, 3]), layout={"width": 400, "height": 300, "title": "bars"})
    static_images(scale=2)
    bundle = figure._repr_mimebundle_()
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG") and struct.unpack(">II", png[16:24]) == (800, 600)  # IHDR: 2x the layout
    assert bundle[PLOTLY]["data"][0]["y"] == [1, 3]  # the interactive figure stays
    static_images("svg")
    svg = figure._repr_mimebundle_()["image/svg+xml"]
    assert svg.startswith("<svg") and ">bars<" in svg


def _notebook(path: Path, *sources: str) -> Path:
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
             for source in sources]
    cells[0]["metadata"]["execution"] = {"iopub.execute_input": "2020-01-01T00:00:00Z"}  # an earlier run's
    path.write_text(json.dumps({
        "cells": cells, "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}}}))
    return path


def _run(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True,
                          timeout=300)


def test_executed_notebooks_keep_images_and_nothing_else(tmp_path):
    good = _notebook(tmp_path / "good.ipynb",
                     "import plotly.graph_objects as go\nimport ipywidgets\nfrom IPython.display import clear_output",
                     # a figure redrawn from a loop, as notebook 05 does: one output remains, with its image
                     "for n in range(1, 4):\n    clear_output(wait=True)\n"
                     "    go.Figure(go.Scatter(y=list(range(n)))).show(renderer='plotly_mimetype')\n"
                     "clear_output(wait=True)\ngo.Figure(go.Scatter(y=[3, 1, 2])).show()",
                     "ipywidgets.IntSlider(3)",
                     # a reply streamed piece by piece, as notebooks 01 and 03 print one: saved as one output
                     "import sys\nfor piece in ('Paris', ' is', ' the capital'):\n"
                     "    sys.stdout.write(piece)\n    sys.stdout.flush()")
    done = _run(good)
    assert done.returncode == 0, done.stderr
    assert "good.ipynb: " in done.stdout and " kB" in done.stdout
    notebook = json.loads(good.read_text())
    cells = notebook["cells"]
    assert "widgets" not in notebook["metadata"] and "execution" not in cells[0]["metadata"]
    assert [cell["execution_count"] for cell in cells] == [1, 2, 3, 4]
    [figure] = cells[1]["outputs"]
    assert figure["data"][PLOTLY]["data"][0]["y"] == [3, 1, 2] and figure["data"]["image/png"]
    assert "text/plain" in cells[2]["outputs"][0]["data"]  # a widget view keeps its text
    [streamed] = cells[3]["outputs"]
    assert streamed["name"] == "stdout" and "".join(streamed["text"]) == "Paris is the capital"


def test_a_failing_or_heavy_notebook_fails_the_run_by_name(tmp_path):
    failing = _notebook(tmp_path / "failing.ipynb", "print('ran')", "1 / 0")
    before = failing.read_text()
    heavy = _notebook(tmp_path / "heavy.ipynb", "print('x' * 1_100_000)")
    done = _run(failing, heavy)
    assert done.returncode == 1
    assert "failing.ipynb: did not run to the end, left as it was" in done.stderr and "ZeroDivisionError" in done.stderr
    assert failing.read_text() == before
    assert "heavy.ipynb: 1.10 MB, over the 1 MB a committed notebook may weigh" in done.stderr
    missing = _run(tmp_path / "none.ipynb")
    assert missing.returncode == 2 and "not a notebook" in missing.stderr.splitlines()[-1]
