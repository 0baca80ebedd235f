"""LOAD: named offline models, local directories and hub ids, loaded for inference.

The registry is plain data and imported at once; the loader (torch, transformers) on first use."""
from typing import TYPE_CHECKING

from ..lazy import lazy_exports
from .registry import ALIASES, DEFAULT_ENCODER, DEFAULT_LLM, ModelAlias, ModelNotFoundError

__getattr__, __dir__ = lazy_exports(__name__, {"LoadedModel": ".loaded", "load_model": ".loader",
                                               "is_ready": ".sources", "package_dir": ".sources",
                                               "resolve_alias": ".sources"})
if TYPE_CHECKING:
    from .loaded import LoadedModel
    from .loader import load_model
    from .sources import is_ready, package_dir, resolve_alias

__all__ = ["ALIASES", "DEFAULT_ENCODER", "DEFAULT_LLM", "LoadedModel", "ModelAlias", "ModelNotFoundError",
           "is_ready", "load_model", "package_dir", "resolve_alias"]
