"""SAE training: recovery of a known sparse dictionary, every architecture, end to end, bad input, DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from steering.cli import main
from steering.config import TrainConfig
from steering.errors import TrainingInterrupted
from steering.sae.autoencoder import HookPoint
from steering.sae.layouts import load_sae
from steering.training.trainer import train_on_activations

D_IN, N_TRUE = 32, 64


def synthetic_source(seed: int = 0, batch: int = 1024, active: int = 3) -> tuple[torch.Tensor, object]:
    """Activations x = codes @ D with D random unit directions and sparse non-negative codes."""
    g = torch.Generator().manual_seed(1000)
    dictionary = torch.randn(N_TRUE, D_IN, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)

    def source(start: int) -> Iterator[tuple[int, torch.Tensor]]:
        rng = torch.Generator().manual_seed(seed * 7919 + start)
        i = start
        while True:
            idx = torch.rand(batch, N_TRUE, generator=rng).argsort(1)[:, :active]
            mags = torch.empty(batch, active).exponential_(1.0, generator=rng) + 0.5
            codes = torch.zeros(batch, N_TRUE).scatter_(1, idx, mags)
            i += 1
            yield i, codes @ dictionary

    return dictionary, source


def _fvu_on(sae, dictionary: torch.Tensor, source) -> float:
    x = next(source(123456))[1]
    x_hat = sae.reconstruct(x)
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_topk_recovers_the_ground_truth_dictionary() -> None:
    dictionary, source = synthetic_source()
    cfg = TrainConfig(arch="topk", k=3, expansion=4, tokens=400_000, batch_size=1024, buffer_size=8192,
                      dead_tokens=20_000, lr=3e-3)
    sae = train_on_activations(source, D_IN, HookPoint(0), cfg).sae
    cos = (dictionary @ (sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)).T).max(1).values
    assert (cos >= 0.9).float().mean() >= 0.8, cos
    assert _fvu_on(sae, dictionary, source) < 0.2


@pytest.mark.parametrize(("arch", "sparsity"), [("relu", 2e-3), ("jumprelu", 1e-3)])
def test_each_architecture_learns_to_reconstruct(arch: str, sparsity: float) -> None:
    dictionary, source = synthetic_source()
    cfg = TrainConfig(arch=arch, expansion=4, tokens=250_000, batch_size=1024, buffer_size=8192, lr=2e-3,
                      sparsity=sparsity)
    result = train_on_activations(source, D_IN, HookPoint(0), cfg)
    assert result.history[-1]["fvu"] < 0.5 * result.history[0]["fvu"]
    assert _fvu_on(result.sae, dictionary, source) < 0.35
    assert result.sae.architecture == {"relu": "standard", "jumprelu": "jumprelu"}[arch]


def test_interrupt_saves_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    _dictionary, source = synthetic_source()
    cfg = TrainConfig(arch="topk", k=3, expansion=2, tokens=40_960, batch_size=1024, buffer_size=4096, log_every=1)
    checkpoint = tmp_path / "sae.checkpoint"

    def stop_at_step_5(point: dict[str, float]) -> None:
        if point["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train_on_activations(source, D_IN, HookPoint(0), cfg, progress=stop_at_step_5, checkpoint=checkpoint)
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["step"] == 5 and state["tokens_seen"] == 5 * 1024
    result = train_on_activations(source, D_IN, HookPoint(0), cfg, checkpoint=checkpoint, resume=True)
    assert result.tokens_seen == 40_960 and result.history[-1]["step"] == 40


# ----------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _d, source = synthetic_source(seed=rank)  # each rank reads different data
        cfg = TrainConfig(arch="topk", k=3, expansion=2, tokens=20_480, batch_size=2048, buffer_size=4096)
        sae = train_on_activations(source, D_IN, HookPoint(0), cfg).sae
        save_file({n: getattr(sae, n).detach().contiguous() for n in sae.weight_names()}, f"{out}/rank{rank}.st")
        dist.barrier()  # both ranks are done with gloo before either tears it down
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = load_file(str(tmp_path / "rank0.st")), load_file(str(tmp_path / "rank1.st"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["W_dec"], torch.zeros_like(a["W_dec"]))


# ----------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import random

    rnd = random.Random(0)
    words = ["the", "rain", "fell", "on", "the", "quiet", "harbour", "while", "she", "read", "the", "letter", "again", "and", "the", "gulls", "cried", "over", "boats", "wind", "waves", "sand", "morning", "night", "brother", "bank", "town", "station", "sea", "storm", "light", "dark"]
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        paras = [" ".join(rnd.choice(words) for _ in range(50)) + "." for _ in range(20)]
        (folder / f"doc{i}.md").write_text("\n\n".join(paras), encoding="utf-8")
    (folder / "notes.bin").write_bytes(b"\x00\x01")  # not a text file: ignored in folders
    return folder


def _train(tiny_model_dir: Path, corpus: Path, out: Path, *extra: str) -> int:
    return main(["train-sae", "--model", str(tiny_model_dir), "--layer", "2", "--corpus", str(corpus),
                 "--tokens", "12000", "--out", str(out), "--batch-size", "512", "--buffer-size", "2048",
                 "--stats-tokens", "3000", "--expansion", "2", "--k", "8", *extra])


def test_train_eval_and_load_end_to_end(tiny_model_dir: Path, corpus_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sae"
    assert _train(tiny_model_dir, corpus_dir, out, "--json", "--plot", str(tmp_path / "curves.png")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens_seen"] >= 11_000
    sae = load_sae(out)
    assert sae.hook == HookPoint(2, "resid_post") and sae.d_sae == 128 and sae.architecture == "topk"
    assert sae.max_act is not None and sae.frequency is not None and float(sae.max_act.max()) > 0
    cfg = json.loads((out / "cfg.json").read_text())
    meta = cfg["tinymorph"]
    assert meta["tokens_seen"] == summary["tokens_seen"] and meta["corpus"]["files"] == 3
    assert meta["seed"] == 0 and "fvu" in meta["final"]
    labels = json.loads((out / "labels.json").read_text())
    assert len(labels["features"]) == 128
    alive = [e for e in labels["features"].values() if e["contexts"]]
    assert alive and all("«" in c["text"] for e in alive for c in e["contexts"])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG" and (out / "training_curves.png").is_file()
    assert not (tmp_path / "sae.checkpoint").exists()

    assert main(["eval-sae", "--model", str(tiny_model_dir), "--sae", str(out), "--corpus",
                 str(corpus_dir / "doc0.md"), "--tokens", "2000", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert 0 <= ev["fvu"] < 1 and 0 < ev["l0"] <= 8 and 0 <= ev["dead_fraction"] <= 1
    assert ev["ce_recovered"] == pytest.approx(
        (ev["ce_ablated"] - ev["ce_sae"]) / (ev["ce_ablated"] - ev["ce_clean"]), rel=1e-3, abs=1e-3)
    # a tiny random model has no massive activations: the typical-token FVU is the FVU over all tokens
    assert ev["massive_tokens"] == 0 and ev["fvu_typical"] == pytest.approx(ev["fvu"], rel=1e-3)

    word = alive[0]["activating"][0] if alive[0]["activating"] else "the"
    assert main(["features", "search", word, "--model", str(tiny_model_dir), "--sae", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"corpus": "empty"}, "empty"),
        ({"tokens": "10000000"}, "fewer than"),
        ({"layer": "9"}, "out of range"),
    ],
)
def test_bad_training_input(tiny_model_dir, corpus_dir, tmp_path, capsys, change, message) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = {"corpus": str(corpus_dir), "tokens": "2000", "layer": "2", "arch": "topk"}
    argv.update({k: (str(empty) if v == "empty" else v) for k, v in change.items()})
    out = tmp_path / "out"
    code = main(["train-sae", "--model", str(tiny_model_dir), "--out", str(out), "--batch-size", "256",
                 "--buffer-size", "1024", *[x for k, v in argv.items() for x in (f"--{k}", v)]])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_refuses_to_overwrite_an_sae(tiny_model_dir, corpus_dir, tmp_path, capsys) -> None:
    out = tmp_path / "sae"
    assert _train(tiny_model_dir, corpus_dir, out) == 0
    before = (out / "sae_weights.safetensors").read_bytes()
    assert _train(tiny_model_dir, corpus_dir, out, "--seed", "1") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "sae_weights.safetensors").read_bytes() == before
    assert _train(tiny_model_dir, corpus_dir, out, "--seed", "1", "--overwrite") == 0
    assert (out / "sae_weights.safetensors").read_bytes() != before


def test_torchrun_two_ranks_cli(tiny_model_dir, corpus_dir, tmp_path) -> None:
    out = tmp_path / "sae"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "steering", "train-sae", "--model", str(tiny_model_dir), "--layer", "1", "--corpus", str(corpus_dir),
         "--tokens", "8000", "--out", str(out), "--batch-size", "512", "--buffer-size", "2048",
         "--stats-tokens", "2000", "--expansion", "2", "--k", "8", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["tokens_seen"] >= 7000
    assert json.loads((out / "cfg.json").read_text())["tinymorph"]["training"]["world_size"] == 2
    assert load_sae(out).hook == HookPoint(1, "resid_post")


def test_jump_relu_straight_through_gradients() -> None:
    """One kernel serves both uses: the activations pass their gradient to `pre` where they fire and
    -theta K(pre - theta) / bw to the threshold; the step (the L0 penalty) passes -K(pre - theta) / bw."""
    from steering.training.trainable import jump_relu

    bw = 0.5
    pre = torch.tensor([[0.1, 0.9, 1.2], [1.1, -0.3, 2.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.5], requires_grad=True)
    acts, step = jump_relu(pre, theta, bw)
    gate = (pre > theta).float()
    torch.testing.assert_close(acts, pre.detach() * gate)
    torch.testing.assert_close(step, gate)
    kernel = ((pre.detach() - theta.detach()).abs() < bw / 2).float() / bw
    upstream = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (acts * upstream).sum().backward()
    torch.testing.assert_close(pre.grad, upstream * gate)
    torch.testing.assert_close(theta.grad, (-theta.detach() * kernel * upstream).sum(0))
    theta.grad = None
    _acts, step = jump_relu(pre, theta, bw)
    step.sum().backward()
    torch.testing.assert_close(theta.grad, (-kernel).sum(0))
