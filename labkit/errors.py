"""Errors that are the user's to fix, shared by the engine, the server and the command line."""
from __future__ import annotations


class UnsupportedModel(TypeError, ValueError):
    """A model this feature cannot drive (an encoder given to the engine, an ONNX session, an attention
    labkit cannot route). A TypeError for code that catches one; a ValueError so the CLI says it in one line
    (exit 2) rather than a traceback."""
