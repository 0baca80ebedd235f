"""`labkit bench engine --systems ...,vllm` without a working vLLM stops at once with one sentence, before
any model loads; and the child's environment is vLLM's documented CPU set-up, not labkit's OpenMP tuning."""
from __future__ import annotations

import sys

import pytest

from labkit.bench.vllm_baseline import cpu_bind, vllm_environment
from labkit.cli import main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("flags, says", [
    ([], "needs --vllm-python"),
    (["--vllm-python", "/no/such/python"], "is not an executable file"),
    (["--vllm-python", sys.executable], "cannot import vllm"),  # labkit's own venv has no vLLM
])
def test_vllm_without_a_working_python_is_one_clear_sentence(flags, says):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "engine", "--no-tune", "--systems", "labkit,vllm", *flags])
    message = str(exit_.value.code)
    assert says in message and "make vllm" in message and "\n" not in message


def test_cpu_bind_names_the_cpus_as_a_range_or_a_list():
    assert cpu_bind([0, 1]) == "0-1" and cpu_bind([3]) == "3-3" and cpu_bind([5, 0, 2]) == "0,2,5"


def test_vllm_environment_replaces_labkits_openmp_tuning(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libiomp5.so").touch()
    tuned = {"PATH": "/bin", "GOMP_SPINCOUNT": "10000", "OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "1",
             "LD_PRELOAD": "/somewhere/libtcmalloc.so", "LABKIT_TUNED": "1"}
    env = vllm_environment(tuned, str(tmp_path), kv_cache_gib=4)
    assert not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "LABKIT_TUNED"} & set(env)
    assert env["LD_PRELOAD"].endswith(str(tmp_path / "lib" / "libiomp5.so")) and "/somewhere" not in env["LD_PRELOAD"]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4" and env["VLLM_CPU_OMP_THREADS_BIND"] == cpu_bind()
    assert env["PATH"] == "/bin"
    assert vllm_environment({"KMP_BLOCKTIME": "200"}, str(tmp_path))["KMP_BLOCKTIME"] == "200"  # a user's own stays
