"""Lazy exports (PEP 562): a package lists its public names and the modules that define them, and each module
is imported the first time one of its names is used. `import labkit` and the `labkit` command stay cheap, and
torch, transformers and FastAPI load only where they are needed."""
from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str | None]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """The `__getattr__` and `__dir__` of `package`. `exports` maps each public name to the module that defines
    it, relative to `package` (".loader"), with ":attribute" when the name differs there (".optimize:optimize");
    None exports the submodule of that name itself."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = exports[name]
        if target is None:
            value = import_module(f".{name}", package)
        else:
            module, _, attribute = target.partition(":")
            value = getattr(import_module(module, package), attribute or name)
        vars(sys.modules[package])[name] = value  # later uses find it without this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
