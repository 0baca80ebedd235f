"""ServerConfig is safe by default and refuses settings that make no sense, before any model loads."""
from __future__ import annotations

import dataclasses

import pytest

from labkit import ServerConfig
from labkit.cli import main

pytestmark = pytest.mark.unit


def test_defaults_are_the_safe_ones():
    config = ServerConfig()
    assert config.host == "127.0.0.1" and config.api_key is None and config.cors_origins == ()
    assert config.max_body_bytes == 1 << 20 and config.max_waiting > 0 and config.access_log is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.host = "0.0.0.0"


@pytest.mark.parametrize("field,value", [("max_waiting", -1), ("max_body_bytes", 0), ("request_timeout_s", 0),
                                         ("port", 70000), ("embed_max_batch_size", 0)])
def test_out_of_range_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        ServerConfig(**{field: value})


def test_cli_refuses_them_in_one_line(capsys):
    assert main(["serve", "--max-waiting", "-1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit: error:") and "max_waiting" in err and len(err.strip().splitlines()) == 1
