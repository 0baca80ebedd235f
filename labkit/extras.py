"""labkit's optional extras: when a feature's package is missing, name the extra that brings it instead of
letting a bare ModuleNotFoundError through."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

EXTRA_OF = {"gradio": "demo", "pandas": "demo", "onnx": "optimize", "bitsandbytes": "optimize",
            "onnxruntime": "cpu", "ray": "ray", "plotly": "lab", "ipywidgets": "lab", "anywidget": "lab"}
ALTERNATIVES = {"cpu": " (or 'gpu' where CUDA is)"}


class MissingExtra(ImportError):
    """A feature's optional package is not installed: the user's to fix, with the command in the message."""


@contextmanager
def needs(feature: str) -> Iterator[None]:
    """Run a feature; if it imports a package of an extra that is not installed, raise MissingExtra naming
    that extra. Any other missing module is a bug and goes through as it is."""
    try:
        yield
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]
        extra = EXTRA_OF.get(package)
        if extra is None:
            raise
        raise MissingExtra(f"{feature} needs {package}, from labkit's optional '{extra}' extra"
                           f"{ALTERNATIVES.get(extra, '')}: pip install 'labkit[{extra}]'") from error
