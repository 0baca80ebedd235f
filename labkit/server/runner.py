"""Running the app under uvicorn: in the foreground (`labkit serve`, with SIGTERM/Ctrl-C handled) or in
a background thread with its own event loop (`labkit.serve`, for notebooks)."""
from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from ..config import ServerConfig
from .hardening import guarded_protocol


class LabkitServer(uvicorn.Server):
    """uvicorn, with a shutdown that drains first: new requests get 503, in-flight ones have the grace
    period to finish, then are cancelled (their streams end with an error event, their KV freed)."""

    def __init__(self, app: FastAPI, config: ServerConfig, log_level: str = "warning"):
        self.app = app
        self.labkit_config = config
        super().__init__(uvicorn.Config(
            app, host=config.host, port=config.port, log_level=log_level, access_log=False,
            timeout_graceful_shutdown=int(config.shutdown_grace_s) + 5, lifespan="on", ws="none",
            server_header=False, proxy_headers=False, http=guarded_protocol(config.header_timeout_s)))

    announce = False  # print the URL once listening (the CLI; port 0 is only known then)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.announce and self.started:
            names = ", ".join(self.app.state.services.names())
            host = self.labkit_config.host
            shown = f"[{host}]" if ":" in host else host
            print(f"labkit: serving {names} on http://{shown}:{self.bound_port} (API docs at /docs; Ctrl-C to stop)",
                  flush=True)

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()  # a handled SIGTERM/SIGINT ends the process cleanly, exit status 0

    async def shutdown(self, sockets=None) -> None:
        await self.app.state.services.drain(self.labkit_config.shutdown_grace_s)
        await super().shutdown(sockets)

    @property
    def bound_port(self) -> int | None:
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                return sock.getsockname()[1]
        return None


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host` and `port`, as uvicorn binds one. `labkit serve` binds before loading its models
    (and `labkit up` tries its router's address before starting replicas), so an address in use is an OSError
    at once, not after the load."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def run_server(models, config: ServerConfig = ServerConfig(), *, engine_options: dict | None = None,
               log_level: str = "info", sock: socket.socket | None = None) -> None:
    """Serve `models` (LoadedModels: one causal LM, one encoder, or both) in the foreground until SIGTERM
    or Ctrl-C, then drain: in-flight requests get `config.shutdown_grace_s` to finish, then are cancelled.
    `sock`: a socket from `listening_socket` on the config's address, else one is bound here."""
    from .app import create_app

    sock = sock if sock is not None else listening_socket(config.host, config.port)
    app = create_app(models, config, engine_options=engine_options)
    server = LabkitServer(app, config, log_level=log_level)
    server.announce = True
    server.run(sockets=[sock])
    print("labkit: server stopped", flush=True)
