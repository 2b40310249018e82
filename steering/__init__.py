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
    "SAE": "sae.autoencoder",
    "HookPoint": "sae.autoencoder",
    "load_sae": "sae.layouts",
    "Annotation": "features.annotate",
    "CancelToken": "runtime.decode",
    "Engine": "engine",
    "EngineConfig": "config",
    "SamplingConfig": "config",
    "Intervention": "runtime.interventions",
    "parse_steer": "runtime.interventions",
    "TinymorphError": "errors",
    "load_model": "runtime.models",
}

if TYPE_CHECKING:
    from steering.features.annotate import Annotation
    from steering.runtime.decode import CancelToken
    from steering.runtime.interventions import Intervention, parse_steer
    from steering.runtime.models import load_model
    from steering.sae.autoencoder import SAE, HookPoint
    from steering.sae.layouts import load_sae

    from .config import EngineConfig, SamplingConfig
    from .engine import Engine
    from .errors import TinymorphError


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'steering' has no attribute {name!r}")
