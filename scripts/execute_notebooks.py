#!/usr/bin/env python3
"""`make notebooks`: execute notebooks in place, with outputs fit to commit.

    .venv/bin/python scripts/execute_notebooks.py [NOTEBOOK ...]     (default: every notebooks/*.ipynb)

Each notebook runs top to bottom in a fresh kernel started in its folder, with `widgets.static_images()` on, so
every plotly figure keeps a PNG beside its JSON: nbconvert's HTML and a code host show the picture, JupyterLab
the interactive figure. Left out, as weight or noise: widget state (it carries plotly.js for each FigureWidget,
20 MB in notebook 06) and per-cell timing metadata. A notebook with a failing cell is left as it was. Exit 1
if any notebook failed, holds a figure without its image, or weighs more than MAX_BYTES.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from choreographer.browsers import Chromium
from nbclient import NotebookClient
from nbclient.exceptions import CellControlSignal, DeadKernelError

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000
PLOTLY = "application/vnd.plotly.v1+json"
IMAGES = ("image/png", "image/svg+xml")
# Run by the kernel before the first cell, outside the notebook's history and execution counts.
IMAGES_ON = "import widgets; widgets.static_images()"


def execute(path: Path, timeout_s: int) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout_s, resources={"metadata": {"path": str(path.parent)}},
                   store_widget_state=False, record_timing=False,
                   extra_arguments=[f"--IPKernelApp.exec_lines={IMAGES_ON}"]).execute()
    notebook.metadata.pop("widgets", None)  # state an earlier save (JupyterLab's, say) left behind
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # timestamps of an earlier run
        if "outputs" in cell:
            cell.outputs = merged_streams(cell.outputs)
    nbformat.write(notebook, path)
    return notebook


def merged_streams(outputs: list) -> list:
    """Consecutive prints to one stream as one output: a reply printed piece by piece would otherwise be saved
    (and rendered) one output per token. nbclient's own coalesce_streams also rewrites carriage returns with
    a regular expression that takes minutes on a megabyte of output; plain concatenation is all this needs."""
    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream" and previous.get("name") == output.get("name")):
            previous["text"] = "".join(previous["text"]) + "".join(output["text"])
        else:
            merged.append(output)
    return merged


def figures_without_image(notebook) -> int:
    return sum(PLOTLY in output.get("data", {}) and not any(m in output["data"] for m in IMAGES)
               for cell in notebook.cells for output in cell.get("outputs", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default 600)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        if not path.is_file() or path.suffix != ".ipynb":
            parser.error(f"not a notebook: {path}")
    if not Chromium.find_browser(skip_local=False):
        parser.error("figures are drawn with Chromium and none was found: install Debian's chromium "
                     "(make test's apt step does) or set BROWSER_PATH")
    problems = []
    for path in paths:
        start = time.monotonic()
        try:
            notebook = execute(path, args.timeout)
        except (CellControlSignal, DeadKernelError) as error:  # a cell raised or timed out, or the kernel died
            problems.append(f"{path}: did not run to the end, left as it was:\n{error}")
            continue
        size, missing = path.stat().st_size, figures_without_image(notebook)
        print(f"{path}: {time.monotonic() - start:.0f} s, {size / 1000:,.0f} kB", flush=True)
        if missing:
            problems.append(f"{path}: {missing} plotly figure(s) without an image (did widgets.static_images() run?)")
        if size > MAX_BYTES:
            problems.append(f"{path}: {size / 1e6:.2f} MB, over the {MAX_BYTES / 1e6:.0f} MB a committed notebook "
                            "may weigh (stacked outputs? a figure with too many points?)")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
