"""The one-time conversion of the default LLM: atomic, locked, and self-healing. Each test converts
for real into its own empty cache (about 15-20 s each)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.models import ALIASES, DEFAULT_LLM, load_model
from labkit.models.sources import MANIFEST, converted_dir, is_ready

pytestmark = pytest.mark.integration
ALIAS = ALIASES[DEFAULT_LLM]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    return tmp_path


def test_two_processes_converting_at_once_both_load(empty_cache):
    script = ("from labkit import load_model; m = load_model('smollm2-135m-instruct', dtype='float32', progress=False); "
              "print(m.num_parameters)")
    env = {**os.environ, "LABKIT_CACHE": str(empty_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out.strip() for out, _ in results] == ["134515008", "134515008"]
    entries = [p for p in (empty_cache / "models").iterdir() if p.is_dir()]
    assert entries == [converted_dir(ALIAS)]  # one entry, no leftover staging folders
    assert is_ready(ALIAS)


def test_truncated_cache_is_detected_and_rebuilt(empty_cache, default_llm_dir):
    target = converted_dir(ALIAS)
    _copy_entry(Path(default_llm_dir), target)
    weights = target / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)  # as if a copy or a conversion was cut off
    assert not is_ready(ALIAS)
    loaded = load_model(DEFAULT_LLM, dtype="float32", progress=False)
    assert loaded.num_parameters == 134_515_008 and is_ready(ALIAS)


def test_same_size_garbage_is_rebuilt_at_load(empty_cache, default_llm_dir):
    target = converted_dir(ALIAS)
    _copy_entry(Path(default_llm_dir), target)
    with open(target / "model.safetensors", "r+b") as handle:
        handle.write(b"\xff" * 64)  # corrupt the header but keep the size: the manifest cannot tell
    assert is_ready(ALIAS)
    loaded = load_model(DEFAULT_LLM, dtype="float32", progress=False)
    assert loaded.num_parameters == 134_515_008
    assert (target / MANIFEST).is_file()


def test_partial_entry_without_manifest_is_not_trusted(empty_cache, default_llm_dir):
    target = converted_dir(ALIAS)
    _copy_entry(Path(default_llm_dir), target)
    (target / MANIFEST).unlink()  # a folder left by something other than a finished conversion
    assert not is_ready(ALIAS)


def _copy_entry(source: Path, target: Path) -> None:
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
