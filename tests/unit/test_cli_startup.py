"""`import labkit` and the `labkit` command start without torch, transformers, FastAPI, uvicorn or OpenTelemetry:
each public name loads its subpackage on first use, and the OpenMP defaults are in place before torch loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

import labkit
from labkit.cli import main

pytestmark = pytest.mark.unit

HEAVY = ("torch", "transformers", "fastapi", "uvicorn", "opentelemetry")


def run_python(code: str):
    """Run `code` in a fresh interpreter without labkit's OpenMP settings; it prints one JSON line."""
    environ = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environ)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


LOADED = f"[m for m in {HEAVY!r} if m in sys.modules]"


def test_import_labkit_loads_none_of_the_heavy_libraries_until_a_name_needs_them():
    seen = run_python("import json, sys\n"
                      "import labkit\n"
                      f"before = {LOADED}\n"
                      "llm = labkit.LLM\n"
                      "print(json.dumps({'before': before, 'after': " + LOADED + ", 'llm': llm.__module__}))")
    assert seen["before"] == []
    assert "torch" in seen["after"] and "transformers" in seen["after"] and seen["llm"] == "labkit.engine.llm"


def test_the_parser_and_labkit_monitor_need_no_torch():
    seen = run_python("import contextlib, io, json, sys\n"
                      "from labkit.cli import build_parser, main\n"
                      "build_parser()\n"
                      "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
                      "    code = main(['monitor', '--url', 'http://127.0.0.1:9'])\n"
                      "print(json.dumps({'loaded': " + LOADED + ", 'code': code, 'err': err.getvalue()}))")
    assert seen["loaded"] == []
    assert seen["code"] == 1 and seen["err"].startswith("labkit: error: cannot read http://127.0.0.1:9/metrics")


@pytest.mark.parametrize("path", ["import labkit; labkit.LLM", "from labkit.engine import LLM"])
def test_openmp_defaults_are_set_before_torch_loads_whichever_way_it_is_reached(path):
    # A finder that notes the environment at the moment torch is first imported, then lets the import go on.
    seen = run_python("import json, os, sys\n"
                      "class Watch:\n"
                      "    seen = None\n"
                      "    def find_spec(self, name, path=None, target=None):\n"
                      "        if name == 'torch' and Watch.seen is None:\n"
                      "            Watch.seen = {k: os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}\n"
                      "sys.meta_path.insert(0, Watch())\n"
                      f"{path}\n"
                      "print(json.dumps(Watch.seen))")
    assert seen == {"GOMP_SPINCOUNT": "10000", "OMP_WAIT_POLICY": "ACTIVE"}


def test_the_public_names_resolve_and_dir_lists_them():
    assert sorted(labkit.__all__) == sorted({"__version__", "load_model", "Generator", "stream_generate",
                                             "optimize_model", "LLM", "AsyncLLM", "SamplingParams", "EngineConfig",
                                             "serve", "ServerConfig", "route", "RouterConfig", "up", "ScaleConfig",
                                             "monitor"})
    for name in labkit.__all__:
        assert getattr(labkit, name) is not None and name in dir(labkit)
    assert labkit.optimize_model is labkit.optimize.optimize and labkit.monitor.source
    with pytest.raises(AttributeError, match="no attribute 'bench_engine'"):
        labkit.bench_engine  # noqa: B018 (off the surface: labkit.bench.engine_bench.bench_engine)


def test_route_stays_the_function_when_its_subpackage_is_imported_first():
    seen = run_python("import json, labkit.route.policies, labkit\n"
                      "print(json.dumps([callable(labkit.route), labkit.route.__module__]))")
    assert seen == [True, "labkit.route.handle"]


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"labkit {metadata.version('labkit')}" == f"labkit {labkit.__version__}"
