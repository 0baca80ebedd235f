"""vLLM's flags on `labkit serve` and `labkit up` reach the loader, the engine config and the served name; exit
codes tell a user's mistake (2) from the world refusing (1) from a bug (a traceback)."""
from __future__ import annotations

import socket

import pytest
import torch

from labkit.cli import build_parser, main
from labkit.commands.flags import engine_options, model_from, slo_from
from labkit.commands.up import replica_flags
from labkit.config import EngineConfig
from labkit.models import DEFAULT_LLM

pytestmark = pytest.mark.unit


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_model_is_the_first_argument_or_model_flag():
    assert model_from(parse("serve", "./mine")) == "./mine"
    assert model_from(parse("serve", "--model", "./mine")) == "./mine"
    assert model_from(parse("serve", "./mine", "--model", "./mine")) == "./mine"
    assert model_from(parse("serve")) == DEFAULT_LLM
    assert model_from(parse("up", "./mine", "--replicas", "2")) == "./mine"


def test_two_different_models_are_one_line_and_exit_2(capsys):
    assert main(["serve", "./a", "--model", "./b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit: error: MODEL is './a' but --model is './b'") and err.count("\n") == 1


def test_engine_flags_set_their_engine_config_fields():
    args = parse("serve", "--max-model-len", "256", "--max-num-seqs", "4", "--max-num-batched-tokens", "64",
                 "--kv-cache-tokens", "1024")
    config = EngineConfig(**engine_options(args))
    assert (config.max_model_len, config.max_num_seqs, config.max_num_batched_tokens, config.kv_cache_tokens) == (
        256, 4, 64, 1024)
    assert engine_options(parse("serve")) == {}  # left out: EngineConfig's defaults


@pytest.mark.parametrize("flag", ["--max-model-len", "--max-num-seqs", "--max-num-batched-tokens", "--kv-cache-tokens"])
def test_engine_flags_refuse_zero(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", flag, "0"])
    assert exit_.value.code == 2 and f"{flag}: must be at least 1" in capsys.readouterr().err


def test_no_encoder_unless_asked():
    assert parse("serve").encoder is None and parse("up").encoder is None
    assert parse("serve", "--encoder", "minilm-l6-v2").encoder == "minilm-l6-v2"


def test_up_gives_each_replica_its_serve_flags():
    up = parse("up", "./mine", "--replicas", "2", "--served-model-name", "mine", "--trust-remote-code",
               "--max-model-len", "256", "--kv-cache-tokens", "1024", "--slo-ttft-ms", "300", "--dtype", "float32")
    replica = parse("serve", "--model", "./mine", *replica_flags(up, "info"))  # as the pool starts each one
    assert replica.served_model_name == "mine" and replica.trust_remote_code and replica.dtype == "float32"
    assert engine_options(replica) == engine_options(up) == {"max_model_len": 256, "kv_cache_tokens": 1024}
    assert slo_from(replica) == slo_from(up) and replica.log_level == "info"


def test_serve_loads_names_and_sizes_the_model_as_told(tiny_model_dirs, monkeypatch):
    import labkit.models
    import labkit.server

    loads, served = [], {}
    real_load = labkit.models.load_model
    monkeypatch.setattr(labkit.models, "load_model",
                        lambda name, **kw: loads.append((name, kw)) or real_load(name, **kw))
    monkeypatch.setattr(labkit.server, "run_server", lambda models, config, **kw: served.update(models=models, **kw))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # serve keeps its main thread at 1: not here
    assert main(["serve", tiny_model_dirs["llama"], "--served-model-name", "mine", "--max-model-len", "100",
                 "--max-num-seqs", "3", "--trust-remote-code", "--port", "0", "--dtype", "float32"]) == 0
    served["sock"].close()
    assert [name for name, _ in loads] == [tiny_model_dirs["llama"]]  # no encoder
    assert loads[0][1]["trust_remote_code"] is True
    assert [m.name for m in served["models"]] == ["mine"]
    assert served["models"][0].source == tiny_model_dirs["llama"]
    assert served["engine_options"]["max_model_len"] == 100 and served["engine_options"]["max_num_seqs"] == 3


@pytest.mark.parametrize("command", [["serve", "no-such-model"], ["up", DEFAULT_LLM, "--replicas", "2"]])
def test_an_address_in_use_is_one_line_and_exit_1_before_any_model_loads(command, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([*command, "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"labkit: error: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1


def test_a_bug_is_a_traceback_not_an_error_line(monkeypatch):
    import labkit.commands.load

    def broken(args):
        raise TypeError("a bug in labkit")

    monkeypatch.setattr(labkit.commands.load, "cmd_info", broken)
    with pytest.raises(TypeError, match="a bug in labkit"):
        main(["info"])


def test_up_refuses_an_unknown_model_before_starting_a_replica(capsys):
    assert main(["up", "./no-such-model-dir", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit: error: No model directory at no-such-model-dir") and err.count("\n") == 1
