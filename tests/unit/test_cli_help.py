"""Every command explains itself, and flags that make no sense are refused before any work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labkit.cli import build_parser, main

pytestmark = pytest.mark.unit


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_help_explains_each_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: labkit {command}") and len(out.splitlines()) > 3


@pytest.mark.parametrize("flags", [["--max-tokens", "0"], ["--temperature", "-1"], ["--dtype", "int3"]])
def test_generate_refuses_bad_flags(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "hi", *flags])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_model_errors_are_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "hi", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit: error:") and "Traceback" not in err and err.count("\n") == 1


def test_shell_completion_offers_the_flags(tmp_path):
    pytest.importorskip("argcomplete")
    line, out = "labkit serve --max-n", tmp_path / "candidates"
    env = {**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": "bash", "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}  # what the shell hook sets
    done = subprocess.run([sys.executable, "-m", "labkit.cli"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(out.read_text().split("\v")) == ["--max-num-batched-tokens", "--max-num-seqs"]


def test_a_server_that_is_not_there_is_one_line_and_exit_1(capsys):
    assert main(["bench", "serve", "--url", "http://127.0.0.1:9", "--requests", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("labkit: error: cannot reach http://127.0.0.1:9") and err.count("\n") == 1
