"""What the benchmarks share: timing, the figures made of timings, the machine block and the JSON result; and the
inputs several of them run on (the prompt, a document of N tokens, the topic paragraphs, the plain steering hook of
the transformers peer).

A benchmark prints one JSON object on stdout (`emit`, which also writes it atomically with `--out`) and its progress
on stderr (`logger`). Timings on CUDA are taken between two synchronisations (`sync`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from steering.atomic import write_text

HERE = Path(__file__).resolve().parent
TOPICS = HERE / "hint_topics.json"
"""Paragraphs on distinct everyday topics, with the words that name each topic, and a short story."""

# ------------------------------------------------------------------------------------------------ timing


def logger(name: str) -> Callable[[str], None]:
    """A progress function writing `[name] message` lines to stderr (stdout is the JSON result)."""

    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return log


def sync(device: torch.device | str | None) -> None:
    """Wait for `device`'s queued work (CUDA); nothing elsewhere."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timed(NamedTuple):
    """A call's wall time in seconds, and what it returned."""

    seconds: float
    result: Any


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> Timed:
    """One call of `fn`, timed from a synchronised start to a synchronised end."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return Timed(time.perf_counter() - t0, result)


def median_of(fn: Callable[[], Any], repeats: int, device: torch.device | str | None = None) -> float:
    """Median seconds of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    return statistics.median(timed(fn, device).seconds for _ in range(repeats))


# ------------------------------------------------------------------------------------------------ figures


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0 <= q <= 1) as the nearest rank of the sorted values (numpy's `method="nearest"`)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within [0, 1], not {q}")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(values: Sequence[float], *, suffix: str = "_ms", digits: int = 2) -> dict[str, float]:
    """`p50<suffix>` (the median), `p95<suffix>` and `n` of latencies, rounded to `digits`; `{"n": 0}` for none."""
    if not values:
        return {"n": 0}
    return {f"p50{suffix}": round(statistics.median(values), digits),
            f"p95{suffix}": round(percentile(values, 0.95), digits), "n": len(values)}


def throughput(times: Sequence[float], tokens: int) -> dict[str, float]:
    """Median and best seconds of runs of `tokens` tokens each, and the tokens/s they make."""
    med = statistics.median(times)
    return {
        "median_s": round(med, 4),
        "min_s": round(min(times), 4),
        "tokens_per_s_median": round(tokens / med, 2),
        "tokens_per_s_best": round(tokens / min(times), 2),
    }


# ------------------------------------------------------------------------------------------------ machine


def device_name(device: torch.device | str) -> str:
    """The GPU's name for a CUDA device, else `<arch> CPU, <n> cores`."""
    device = torch.device(device)
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def machine(device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> dict[str, Any]:
    """Where the figures were measured: `platform`, `processor`, `cpu_count`, `torch`, `transformers`,
    `torch_threads`; with `device` also `device` and `device_name`, with `dtype` also `dtype`."""
    import transformers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device is not None:
        info["device"] = str(torch.device(device))
        info["device_name"] = device_name(device)
    if dtype is not None:
        info["dtype"] = str(dtype).removeprefix("torch.")
    return info


# ------------------------------------------------------------------------------------------------ output


def emit(result: dict[str, Any], out: str | Path | None, *, ensure_ascii: bool = True) -> None:
    """Print `result` as JSON and, with `out`, write it there too, atomically (a temporary file renamed into
    place: a reader never sees half a result, a failure leaves the old one)."""
    text = json.dumps(result, indent=2, ensure_ascii=ensure_ascii)
    print(text)
    if out:
        write_text(out, text + "\n")


# ------------------------------------------------------------------------------------------------ inputs

PROMPT = "The old lighthouse keeper climbed the stairs every evening, and tonight he noticed that"
"""The prompt decode benchmarks continue."""

PARAGRAPHS = (
    "The harbour was quiet in the grey morning, and the boats knocked softly against the pier. She walked along "
    "the water with the letter in her pocket, thinking of her brother and of the bank that would not wait.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. In the chloroplasts, pigments "
    "absorb red and blue light most strongly, which is why most leaves look green to us.",
    "To install the package, create a virtual environment, activate it, and run the installer with the version "
    "you need. If the build fails, check that a compiler is available and that your headers match.",
    "The committee met on Tuesday to discuss the budget for next year. After a long debate about the roads and "
    "the new library, the members agreed to raise the parking fees and to postpone the swimming pool.",
    "In 1848 revolutions spread across Europe, from Paris to Vienna and Berlin. Most were put down within a "
    "year, but they left behind new constitutions, a freer press and the memory of what had almost happened.",
    "Whisk the eggs with the sugar until pale, then fold in the flour and the melted butter. Bake for twenty "
    "minutes, let the cake cool on a rack, and dust it with icing sugar just before serving.",
    "The striker picked up the ball at midfield, beat two defenders and curled a shot into the far corner. The "
    "crowd rose as one; the coach, who had been shouting all afternoon, simply sat down and smiled.",
    "A prime number has exactly two divisors, one and itself. Euclid showed that there are infinitely many: "
    "multiply any finite list of primes together, add one, and the result has a prime factor not in the list.",
)
"""Varied prose `build_document` repeats."""


def build_document(tokenizer: Any, n_tokens: int) -> tuple[str, int]:
    """Varied prose, repeated until long enough, then cut (via decode) to exactly `n_tokens` as annotate counts them."""
    parts: list[str] = []
    i = 0
    while True:
        parts.append(f"{i // len(PARAGRAPHS) + 1}.{i % len(PARAGRAPHS) + 1} {PARAGRAPHS[i % len(PARAGRAPHS)]}")
        i += 1
        if i % len(PARAGRAPHS) == 0:
            text = "\n\n".join(parts)
            plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(plain) >= n_tokens + 16:
                break
    cut = n_tokens
    doc, count = text, len(tokenizer(text)["input_ids"])
    for _ in range(32):  # decode/re-encode may merge at the cut, and annotate's call may add a BOS: adjust
        doc = tokenizer.decode(plain[:cut], skip_special_tokens=True)
        count = len(tokenizer(doc)["input_ids"])
        if count == n_tokens:
            break
        cut += n_tokens - count
    return doc, count


def hint_topics(path: str | Path = TOPICS) -> dict[str, Any]:
    """The topic paragraphs file: `paragraphs` (each with `topic`, `text`, `accept`) and `story`."""
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data


def held_out_text() -> str:
    """The topic paragraphs as one text: prose no SAE was trained on."""
    return "\n\n".join(p["text"] for p in hint_topics()["paragraphs"])


_WORD = re.compile(r"[^\W\d_]+")


def names_topic(labels: list[str], accept: list[str]) -> bool:
    """Whether a word of `labels` names the topic: it equals an `accept` word, or one starts with the other and both
    have four letters at least."""
    words = {w.lower() for label in labels for w in _WORD.findall(label)}
    return any(w == a or (len(w) >= 4 and len(a) >= 4 and (w.startswith(a) or a.startswith(w)))
               for w in words for a in accept)


def block_hook(block: torch.nn.Module, site: str, vec: torch.Tensor) -> Any:
    """A plain steering hook, the way most steering libraries do it: add `vec` to the block's output (resid_post)
    or input (resid_pre). Returns the hook's handle (`.remove()` it)."""
    if site == "resid_pre":

        def pre(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (args[0] + vec, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vec}

        return block.register_forward_pre_hook(pre, with_kwargs=True)

    def post(_module: Any, _args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return output + vec
        return (output[0] + vec, *output[1:])

    return block.register_forward_hook(post)
