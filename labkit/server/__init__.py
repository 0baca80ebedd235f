"""SERVE: the OpenAI-compatible HTTP server over the engine, and its background handle for notebooks."""
from .app import create_app
from .handle import ServerHandle, serve
from .runner import run_server

__all__ = ["ServerHandle", "create_app", "run_server", "serve"]
