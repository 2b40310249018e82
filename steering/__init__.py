"""tinymorph's engine: a causal LM, a sparse autoencoder on one layer, annotation and steered generation.

Nothing heavy happens at import: submodules (and torch) load on first use of a name below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "SAE",
    "Annotation",
    "CancelToken",
    "Engine",
    "EngineConfig",
    "HookPoint",
    "Intervention",
    "SamplingConfig",
    "TinymorphError",
    "load_model",
    "load_sae",
    "parse_steer",
]

_WHERE = {
    "SAE": "sae",
    "HookPoint": "sae",
    "load_sae": "sae",
    "Annotation": "annotate",
    "CancelToken": "generate",
    "Engine": "engine",
    "EngineConfig": "config",
    "SamplingConfig": "config",
    "Intervention": "interventions",
    "parse_steer": "interventions",
    "TinymorphError": "errors",
    "load_model": "models",
}

if TYPE_CHECKING:
    from .annotate import Annotation
    from .config import EngineConfig, SamplingConfig
    from .engine import Engine
    from .errors import TinymorphError
    from .generate import CancelToken
    from .interventions import Intervention, parse_steer
    from .models import load_model
    from .sae import SAE, HookPoint, load_sae


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'steering' has no attribute {name!r}")
