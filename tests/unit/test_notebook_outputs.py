"""The committed notebooks read well anywhere (issue 17): each under 1 MB; every plotly figure with an image beside
its JSON (nbconvert's HTML and a code host cannot draw the JSON); no widget view without a fallback; no stacked
copies of one output; no test scaffolding in the reader's view (cells of asserts only, a bare `True`).

LABKIT_NOTEBOOKS=DIR checks the notebooks of another folder, such as copies `make notebooks` executed in /tmp.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDER = Path(os.environ.get("LABKIT_NOTEBOOKS", ROOT / "notebooks"))
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
MAX_BYTES = 1_000_000  # scripts/execute_notebooks.py (make notebooks) refuses the same
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"
IMAGES = {"image/png", "image/svg+xml"}
FALLBACKS = IMAGES | {"text/plain", "text/html"}

pytestmark = pytest.mark.unit


def _code_cells(path: Path):
    for number, cell in enumerate(json.loads(path.read_text())["cells"], 1):
        if cell["cell_type"] == "code":
            yield number, cell


def _outputs(path: Path):
    for number, cell in _code_cells(path):
        for output in cell.get("outputs", []):
            yield number, output


def _signature(output: dict) -> str | None:
    """What makes two display outputs the same thing shown twice: for a plotly figure its layout (a figure
    redrawn from a loop keeps its title and axes while its data grow), for anything else all of its data."""
    if output["output_type"] != "display_data":
        return None
    data = output["data"]
    return json.dumps(data[PLOTLY]["layout"] if PLOTLY in data else data, sort_keys=True)


def test_there_are_notebooks_to_check():
    assert NOTEBOOKS, f"no notebooks in {FOLDER}"


@pytest.fixture(params=NOTEBOOKS, ids=lambda path: path.name)
def notebook(request) -> Path:
    return request.param


def test_a_notebook_weighs_under_1_mb(notebook):
    size = notebook.stat().st_size
    assert size <= MAX_BYTES, f"{notebook.name} weighs {size / 1e6:.2f} MB: regenerate it with make notebooks"


def test_every_plotly_figure_carries_an_image(notebook):
    bare = [number for number, output in _outputs(notebook)
            if PLOTLY in output.get("data", {}) and not IMAGES & set(output["data"])]
    assert not bare, f"{notebook.name}: figures without an image in cells {bare}: regenerate with make notebooks"


def test_every_widget_view_has_a_fallback(notebook):
    bare = [number for number, output in _outputs(notebook)
            if WIDGET in output.get("data", {}) and not FALLBACKS & set(output["data"])]
    assert not bare, f"{notebook.name}: widget views with nothing else to show in cells {bare}"


def test_no_cell_stacks_copies_of_one_output(notebook):
    for number, cell in _code_cells(notebook):
        signatures = [_signature(output) for output in cell.get("outputs", [])]
        stacked = [a for a, b in zip(signatures, signatures[1:]) if a is not None and a == b]
        assert not stacked, f"{notebook.name}, cell {number}: the same output shown again right after itself"


def test_no_assert_only_cells_or_bare_true_results(notebook):
    for number, cell in _code_cells(notebook):
        try:
            body = ast.parse("".join(cell["source"])).body
        except SyntaxError:  # IPython syntax (magics): not plain Python, and not a bare assert either
            continue
        assert not body or not all(isinstance(node, ast.Assert) for node in body), \
            f"{notebook.name}, cell {number} holds only asserts: a check belongs in tests/, or in a printed sentence"
        for output in cell.get("outputs", []):
            text = "".join(output.get("data", {}).get("text/plain", "")) if output["output_type"] == "execute_result" else ""
            assert text.strip() != "True", f"{notebook.name}, cell {number} ends in a bare True"
