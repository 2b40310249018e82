"""The benchmarks are not run by the suite: here each one is imported and its command line parsed (no benchmark
runs), and the harness they share is checked on known numbers."""

from __future__ import annotations

import importlib
import json
import os
import statistics
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))
LIBRARIES = {"harness", "lsp_client"}
"""Modules the benchmarks import; every other module is a benchmark with `parser()` and `main(argv)`."""


@pytest.fixture(scope="module")
def load() -> ModuleType:
    """`importlib.import_module` with benchmarks/ first on sys.path, as it is when a benchmark runs as a script."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        yield importlib.import_module


@pytest.fixture(scope="module")
def harness(load) -> ModuleType:
    return load("harness")


def test_the_benchmarks_are_found() -> None:
    assert set(SCRIPTS) >= {"bench_engine", "bench_decode", "bench_lsp", *LIBRARIES}


@pytest.mark.parametrize("name", SCRIPTS)
def test_imports_and_parses_its_command_line(name: str, load, capsys) -> None:
    module = load(name)
    if name in LIBRARIES:
        assert not hasattr(module, "main")
        return
    parser = module.parser()
    parser.parse_args([])  # every option has a default that parses
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--out" in out


# ------------------------------------------------------------------------------------------------ harness


def test_emit_prints_and_writes_the_json_atomically(harness, tmp_path, capsys, monkeypatch) -> None:
    result = {"benchmark": "x", "figures": {"median_s": 0.5, "n": 3}, "text": "café ⟨rain⟩"}
    dest = tmp_path / "results" / "x.json"
    harness.emit(result, str(dest))
    assert json.loads(capsys.readouterr().out) == result
    assert json.loads(dest.read_text(encoding="utf-8")) == result
    assert os.listdir(dest.parent) == ["x.json"]  # no temporary left beside it

    harness.emit(result, dest, ensure_ascii=False)
    assert "café ⟨rain⟩" in capsys.readouterr().out and "café ⟨rain⟩" in dest.read_text(encoding="utf-8")

    def fail(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("steering.atomic.os.replace", fail)  # the rename into place fails: the old file stays
    with pytest.raises(OSError, match="disk full"):
        harness.emit({"benchmark": "y"}, dest)
    assert json.loads(capsys.readouterr().out) == {"benchmark": "y"}  # printed before the write
    assert json.loads(dest.read_text(encoding="utf-8")) == result
    assert os.listdir(dest.parent) == ["x.json"]

    harness.emit(result, None)  # no --out: printed only
    assert json.loads(capsys.readouterr().out) == result


def test_machine_block(harness) -> None:
    host = {"platform", "processor", "cpu_count", "torch", "transformers", "torch_threads"}
    assert set(harness.machine()) == host
    block = harness.machine("cpu", torch.bfloat16)
    assert set(block) == host | {"device", "device_name", "dtype"}
    assert block["device"] == "cpu" and block["dtype"] == "bfloat16" and block["torch"] == torch.__version__
    assert block["cpu_count"] == os.cpu_count() and block["device_name"].endswith(f"CPU, {os.cpu_count()} cores")
    assert harness.machine(torch.device("cpu"), "float32")["dtype"] == "float32"
    json.dumps(block)


def test_percentile_and_latency_on_known_numbers(harness) -> None:
    values = [float(v) for v in range(20, 0, -1)]  # 1 .. 20, unsorted
    assert harness.percentile(values, 0.0) == 1.0
    assert harness.percentile(values, 1.0) == 20.0
    assert harness.percentile(values, 0.95) == 19.0  # rank round(0.95 * 19) = 18 of 0 .. 19
    assert harness.percentile([3.0], 0.95) == 3.0
    with pytest.raises(ValueError):
        harness.percentile([], 0.5)
    with pytest.raises(ValueError):
        harness.percentile(values, 95)
    assert harness.latency(values) == {"p50_ms": 10.5, "p95_ms": 19.0, "n": 20}
    assert harness.latency([1.234, 2.345, 9.876], suffix="", digits=1) == {"p50": 2.3, "p95": 9.9, "n": 3}
    assert harness.latency([]) == {"n": 0}


def test_throughput_on_known_numbers(harness) -> None:
    assert harness.throughput([2.0, 1.0, 4.0], 8) == {"median_s": 2.0, "min_s": 1.0, "tokens_per_s_median": 4.0,
                                                      "tokens_per_s_best": 8.0}


def test_timed_and_median_of(harness) -> None:
    calls = []
    seconds, result = harness.timed(lambda: calls.append(1) or "done")
    assert result == "done" and seconds >= 0
    assert harness.median_of(lambda: calls.append(1), 3) >= 0
    assert len(calls) == 1 + 1 + 3  # timed once, then one warm-up and three timed runs


def test_block_hook_adds_the_vector_after_or_before_the_block(harness) -> None:
    class Block(torch.nn.Module):
        def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, None]:
            return 2 * hidden_states, None

    block, x, vec = Block(), torch.ones(1, 3, 4), torch.arange(4.0)
    handle = harness.block_hook(block, "resid_post", vec)
    assert torch.equal(block(x)[0], 2 * x + vec)
    handle.remove()
    for call in (lambda: block(x), lambda: block(hidden_states=x)):
        handle = harness.block_hook(block, "resid_pre", vec)
        assert torch.equal(call()[0], 2 * (x + vec))
        handle.remove()
    assert torch.equal(block(x)[0], 2 * x)


def test_texts(harness) -> None:
    topics = harness.hint_topics()
    assert topics["paragraphs"] and all({"topic", "text", "accept"} <= set(p) for p in topics["paragraphs"])
    assert harness.held_out_text().startswith(topics["paragraphs"][0]["text"])
    assert harness.names_topic(["Cooking, recipes"], ["recipe"])
    assert harness.names_topic(["the sea"], ["sea"]) and not harness.names_topic(["seaside"], ["sea"])
    assert statistics.median([len(p) for p in harness.PARAGRAPHS]) > 100


def test_tiny_assets(tmp_path) -> None:
    """The tiny model loads as a model folder; the SAE folder is a SAELens TopK SAE with unit decoder rows."""
    from safetensors.torch import load_file

    from steering.runtime.models import load_model
    from steering.testing import save_tiny_assets

    assets = save_tiny_assets(tmp_path)
    assert load_model(str(assets.model), "cpu").d_model == 64
    cfg = json.loads((assets.sae / "cfg.json").read_text(encoding="utf-8"))
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", 64, 8 * 64, 16)
    assert cfg["hook_name"] == "blocks.2.hook_resid_post"
    weights = load_file(str(assets.sae / "sae_weights.safetensors"))
    torch.testing.assert_close(weights["W_dec"].norm(dim=-1), torch.ones(8 * 64))
    torch.testing.assert_close(weights["W_enc"], weights["W_dec"].T)
