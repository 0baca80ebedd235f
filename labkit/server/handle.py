"""`labkit.serve(...)`: the server in a background thread, for notebooks and scripts.

    with labkit.serve("smollm2-135m-instruct", port=0) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")

The server has its own event loop in its own thread, so it works inside Jupyter (whose loop is already
running) and never blocks the caller.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

from ..config import ServerConfig
from ..models import LoadedModel, load_model
from .app import create_app
from .runner import LabkitServer


class ServerHandle:
    def __init__(self, server: LabkitServer, thread: threading.Thread, host: str, port: int):
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port
        self.app = server.app
        self.bus = server.app.state.bus  # the monitor's event bus: labkit.monitor.source(handle) reads it

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain and stop (in-flight requests get the grace period), then join the thread."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        models = ", ".join(self.app.state.services.names())
        return f"ServerHandle({self.url}, models: {models}, {'running' if self.running else 'stopped'})"


def serve(model: str | LoadedModel | None = "smollm2-135m-instruct", *, encoder: str | LoadedModel | None = None,
          port: int = 0, host: str | None = None, config: ServerConfig | None = None,
          device: str = "auto", dtype: str = "auto", startup_timeout: float = 120.0,
          **engine_options) -> ServerHandle:
    """Start the OpenAI-compatible server in the background and return once it accepts connections.

    `model` is the causal LM (alias, hub id, path or a `LoadedModel`; None for an embeddings-only server),
    `encoder` an optional encoder for /v1/embeddings. `port=0` (the default) picks a free port, see
    `handle.url`; `port` always wins over `config.port`, `host` over `config.host` only when given
    (the default is 127.0.0.1). `engine_options` go to the engine (for example `max_num_seqs`)."""
    config = config or ServerConfig()
    config = replace(config, host=config.host if host is None else host, port=port)
    host = config.host
    models = [m if isinstance(m, LoadedModel) else load_model(m, device=device, dtype=dtype, progress=False)
              for m in (model, encoder) if m is not None]
    server = LabkitServer(create_app(models, config, engine_options=engine_options), config)
    failure: list[BaseException] = []

    def run():
        try:
            asyncio.run(server.serve())
        except BaseException as err:  # reported to the caller below
            failure.append(err)

    thread = threading.Thread(target=run, name=f"labkit-serve-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            reason = failure[0] if failure else "it did not start in time"
            raise OSError(f"the server could not start on {host}:{port}: {reason}")
        time.sleep(0.02)
    return ServerHandle(server, thread, host, server.bound_port)
