"""A feature whose optional package is missing names the extra to install; a missing module that is no
extra's stays the bug it is."""
from __future__ import annotations

import builtins
import importlib

import pytest

from labkit import cli
from labkit.extras import MissingExtra, needs

pytestmark = pytest.mark.unit


def _without(monkeypatch, *packages):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in packages:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_a_missing_extra_is_named_with_its_install_command(monkeypatch):
    _without(monkeypatch, "bitsandbytes")
    with pytest.raises(MissingExtra, match=r"bnb-8bit needs bitsandbytes, from labkit's optional 'optimize' "
                                           r"extra: pip install 'labkit\[optimize\]'"):
        with needs("bnb-8bit"):
            import bitsandbytes  # noqa: F401


def test_a_module_of_no_extra_goes_through(monkeypatch):
    _without(monkeypatch, "not_a_labkit_dependency")
    with pytest.raises(ModuleNotFoundError) as raised:
        with needs("something"):  # by name: a static import would read as an undeclared test dependency
            importlib.import_module("not_a_labkit_dependency")
    assert not isinstance(raised.value, MissingExtra)


def test_labkit_demo_without_gradio_is_one_line_and_exit_2(monkeypatch, capsys):
    _without(monkeypatch, "gradio")
    assert cli.main(["demo", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("labkit: error: labkit demo needs gradio, from labkit's optional 'demo' extra: "
                           "pip install 'labkit[demo]'")


def test_an_optimizer_without_its_extra_names_it(monkeypatch):
    import sys

    from labkit.optimize import OPTIMIZERS
    monkeypatch.delitem(sys.modules, "labkit.optimize.onnx_runtime", raising=False)
    _without(monkeypatch, "onnxruntime")
    with pytest.raises(MissingExtra, match=r"'cpu' extra \(or 'gpu' where CUDA is\)"):
        OPTIMIZERS["onnx"](object())
