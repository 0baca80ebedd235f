"""LOAD: named offline models, local directories and hub ids, loaded for inference."""
from .loaded import LoadedModel
from .loader import load_model
from .registry import ALIASES, DEFAULT_ENCODER, DEFAULT_LLM, ModelAlias, ModelNotFoundError
from .sources import is_ready, package_dir, resolve_alias

__all__ = ["ALIASES", "DEFAULT_ENCODER", "DEFAULT_LLM", "LoadedModel", "ModelAlias", "ModelNotFoundError",
           "is_ready", "load_model", "package_dir", "resolve_alias"]
