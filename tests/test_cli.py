"""The `tinymorph` CLI on a tiny local model: JSON shapes, and one clear error line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from steering.cli import main
from steering.runtime.models import resolve_dtype
from steering.sae.autoencoder import SAE, HookPoint


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    sae = SAE(64, 128, "topk", k=8, hook=HookPoint(2, "resid_post"))
    sae.W_enc.data.normal_(0, 0.3)
    sae.W_dec.data.normal_(0, 0.1)
    sae.set_feature_stats(max_act=torch.full((128,), 2.0), frequency=torch.full((128,), 0.01))
    return sae.save(tmp_path_factory.mktemp("sae") / "tiny-sae")


def run_json(capsys, *argv: str) -> dict:
    code = main([*list(argv), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_info(capsys, tiny_model_dir, sae_dir) -> None:
    data = run_json(capsys, "info", "--model", str(tiny_model_dir), "--sae", str(sae_dir))
    assert data["layers"] == 4 and data["d_model"] == 64 and data["d_sae"] == 128
    assert data["hook"] == "blocks.2.hook_resid_post" and data["sae_layout"] == "saelens"
    assert data["feature_stats"] is True and data["device"] == "cpu"
    assert data["dtype"] == str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")


def test_info_without_sae_reports_vector_steering(capsys, tiny_model_dir) -> None:
    data = run_json(capsys, "info", "--model", str(tiny_model_dir), "--sae", "none")
    assert data["sae"] is None and "vector" in data["steering_scale"]


def test_annotate(capsys, tiny_model_dir, sae_dir, tmp_path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nA first paragraph about rain.\n\nA second one, about the sea.\n", encoding="utf-8")
    data = run_json(capsys, "annotate", str(doc), "--model", str(tiny_model_dir), "--sae", str(sae_dir))
    assert len(data["paragraphs"]) == 3
    assert all(str(f["feature"]) in data["labels"] for p in data["paragraphs"] for f in p["features"])
    assert data["tokens"][0]["features"] == []


def test_generate_steered_and_compared(capsys, tiny_model_dir, sae_dir) -> None:
    data = run_json(capsys, "generate", "--prompt", "Once", "--max-tokens", "6", "--steer", "3=+8", "--steer",
                    "5=off", "--compare", "--model", str(tiny_model_dir), "--sae", str(sae_dir))
    assert data["steering"] == [{"mode": "add", "feature": 3, "strength": 8.0}, {"mode": "ablate", "feature": 5}]
    assert isinstance(data["text"], str) and isinstance(data["unsteered"], str)


def test_generate_with_contrast_vector(capsys, tiny_model_dir) -> None:
    data = run_json(capsys, "generate", "--prompt", "Once", "--max-tokens", "4", "--contrast", "joy", "gloom",
                    "--model", str(tiny_model_dir), "--sae", "none")
    assert data["steering"] == [{"mode": "vector", "strength": 4.0}]


def test_generate_batch_decodes_every_line_as_it_would_alone(capsys, tiny_model_dir, sae_dir, tmp_path) -> None:
    batch = tmp_path / "prompts.jsonl"
    batch.write_text('Once\n\n{"prompt": "Rain fell", "steer": ["3=+8", "5=clamp:2"]}\nThe sea\n', encoding="utf-8")
    common = ["--max-tokens", "6", "--model", str(tiny_model_dir), "--sae", str(sae_dir)]
    assert main(["generate", "--batch", str(batch), "--rows", "2", "--steer", "7=off", *common]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["prompt"] for d in lines] == ["Once", "Rain fell", "The sea"]
    assert lines[0]["steering"] == [{"mode": "ablate", "feature": 7}]
    assert lines[1]["steering"] == [{"mode": "add", "feature": 3, "strength": 8.0},
                                    {"mode": "clamp", "feature": 5, "value": 2.0}]
    alone = run_json(capsys, "generate", "--prompt", "Rain fell", "--steer", "3=+8", "--steer", "5=clamp:2", *common)
    assert lines[1]["text"] == alone["text"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"prompt": 3}\n', "needs a \"prompt\" string"), ('{"prompt": "a", "steer": "3=+1"}\n', "must be a list"),
    ("{not json\n", "not valid JSON"), ("\n\n", "no prompts")])
def test_generate_batch_bad_files_are_one_clear_error(capsys, tiny_model_dir, tmp_path, content, message) -> None:
    batch = tmp_path / "bad.jsonl"
    batch.write_text(content, encoding="utf-8")
    assert main(["generate", "--batch", str(batch), "--model", str(tiny_model_dir), "--sae", "none"]) == 2
    out = capsys.readouterr()
    assert message in out.err and "Traceback" not in out.err and out.out == ""


def test_explain(capsys, tiny_model_dir, sae_dir) -> None:
    data = run_json(capsys, "features", "explain", "7", "--top", "4", "--model", str(tiny_model_dir),
                    "--sae", str(sae_dir))
    assert data["feature"] == 7 and len(data["promoted"]) == 4 and data["max_act"] == 2.0
    scores = [t["score"] for t in data["promoted"]]
    assert scores == sorted(scores, reverse=True)
    own = run_json(capsys, "features", "explain", "7", "--self", "--model", str(tiny_model_dir),
                   "--sae", str(sae_dir))["self"]
    assert own["feature"] == 7 and len(own["sweep"]) == 5 and own["scale"] in [s["scale"] for s in own["sweep"]]
    assert isinstance(own["text"], str) and 0 <= own["entropy"] <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--prompt", "x", "--steer", "oops"], "Cannot parse steering spec"),
        (["generate", "--prompt", "x", "--steer", "999=+1"], "out of range"),
        (["features", "explain", "128"], "out of range"),
        (["annotate", "/no/such/file.md"], "No such file"),
    ],
)
def test_errors_are_one_line_exit_2(capsys, tiny_model_dir, sae_dir, argv, message) -> None:
    code = main([*argv, "--model", str(tiny_model_dir), "--sae", str(sae_dir)])
    out = capsys.readouterr()
    assert code == 2
    assert out.out == ""
    assert out.err.startswith("tinymorph: error:") and message in out.err and out.err.count("\n") == 1


def test_bad_sae_path_and_missing_sae(capsys, tiny_model_dir, tmp_path) -> None:
    assert main(["info", "--model", str(tiny_model_dir), "--sae", str(tmp_path / "nope")]) == 2
    assert "SAE path not found" in capsys.readouterr().err
    assert main(["features", "explain", "1", "--model", str(tiny_model_dir), "--sae", "none"]) == 2
    assert "needs an SAE" in capsys.readouterr().err


def test_sae_for_another_model_names_both_sizes(capsys, tiny_model_dir, tmp_path) -> None:
    other = SAE(32, 64, "standard", hook=HookPoint(1, "resid_post")).save(tmp_path / "other")
    assert main(["info", "--model", str(tiny_model_dir), "--sae", str(other)]) == 2
    err = capsys.readouterr().err
    assert "32" in err and "64" in err


def test_subprocess_has_no_traceback(tiny_model_dir) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "steering", "generate", "--prompt", "x", "--steer", "1=clamp:abc",
         "--model", str(tiny_model_dir), "--sae", "none"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert "Cannot parse steering spec" in proc.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly(tiny_model_dir, sae_dir, tmp_path) -> None:
    """`tinymorph annotate F | head -1`: the closed pipe ends the command with exit 0 and nothing on stderr."""
    doc = tmp_path / "long.md"
    doc.write_text("\n\n".join(f"Paragraph {i} about the rain on the harbour." for i in range(400)), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "steering", "annotate", str(doc), "--model", str(tiny_model_dir), "--sae", str(sae_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert first.startswith("¶".encode()) and err == ""


def test_train_sae_flags_come_from_the_config_fields() -> None:
    import dataclasses

    from steering.cli import build_parser
    from steering.config import TrainConfig, field_docs

    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train-sae")[1]
    by_dest = {a.dest: a for a in train._actions}
    docs = field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        assert f.name in by_dest, f.name
        assert docs[f.name] and by_dest[f.name].help.startswith(docs[f.name].replace("%", "%%")), f.name
        if f.name != "layer":
            assert by_dest[f.name].default == f.default, f.name
    assert by_dest["layer"].required and by_dest["arch"].choices == ("topk", "relu", "jumprelu")
    args = train.parse_args(["--corpus", "x", "--out", "y", "--layer", "3", "--dead-tokens", "500", "--lr", "1e-3",
                             "--allow-repeat"])
    from steering.config import from_arguments

    cfg = from_arguments(TrainConfig, args)
    assert (cfg.layer, cfg.dead_tokens, cfg.lr, cfg.allow_repeat, cfg.k) == (3, 500, 1e-3, True, 32)


def test_engine_flags_come_from_the_config_fields() -> None:
    import dataclasses

    from steering.cli import NOT_FOR_TRAINING, build_parser
    from steering.config import EngineConfig, field_docs, from_arguments

    commands = build_parser()._subparsers._group_actions[0].choices
    by_dest = {a.dest: a for a in commands["info"]._actions}
    docs = field_docs(EngineConfig)
    for f in dataclasses.fields(EngineConfig):
        assert f.name in by_dest, f.name
        assert docs[f.name] and by_dest[f.name].help.startswith(docs[f.name].replace("%", "%%")), f.name
        assert by_dest[f.name].default == f.default, f.name
    assert by_dest["dtype"].choices == ("auto", "float32", "bfloat16", "float16")
    assert by_dest["device_map"].choices == ("auto",) and by_dest["device"].choices is None
    assert {"--fast", "--no-fast"} <= set(by_dest["fast"].option_strings)
    assert by_dest["trust_remote_code"].option_strings == ["--trust-remote-code"]  # off by default: no --no- flag
    args = commands["info"].parse_args(["--model", "m", "--sae", "none", "--sae-layer", "3", "--device", "cuda:1",
                                        "--no-fast", "--no-int8", "--cache-mb", "64", "--device-map", "auto",
                                        "--max-memory", "0=20GiB", "--offload-folder", "off", "--trust-remote-code"])
    assert from_arguments(EngineConfig, args) == EngineConfig(
        model="m", sae="none", sae_layer=3, device="cuda:1", fast=False, int8=False, cache_mb=64, device_map="auto",
        max_memory="0=20GiB", offload_folder="off", trust_remote_code=True)
    assert from_arguments(EngineConfig, commands["info"].parse_args([])) == EngineConfig()
    train = {a.dest for a in commands["train-sae"]._actions}
    assert {"model", "device", "dtype", "trust_remote_code"} <= train
    assert not {"sae", "sae_layer", "fast", "int8", "cache_mb"} & train and set(NOT_FOR_TRAINING) - {"layer"} <= (
        {f.name for f in dataclasses.fields(EngineConfig)} - train)


def test_stats_and_calibration_write_only_beside_an_sae_read_from_files() -> None:
    from steering.errors import TinymorphError
    from steering.evaluation.calibrate import calibrate_folder
    from steering.features.labels import write_stats_and_labels

    made_here = SAE(64, 128, "topk", k=8)  # in memory: no folder to write into, refused before the model is used
    with pytest.raises(TinymorphError, match="not read from files"):
        write_stats_and_labels(None, made_here, torch.zeros(0, dtype=torch.long))  # type: ignore[arg-type]
    with pytest.raises(TinymorphError, match="read from files"):
        calibrate_folder(None, made_here)  # type: ignore[arg-type]


def test_sae_stats_writes_statistics_and_word_labels_beside_the_sae(capsys, tiny_model_dir, sae_dir, tmp_path) -> None:
    import shutil

    from steering.sae.layouts import load_sae

    folder = tmp_path / "copy"
    shutil.copytree(sae_dir, folder)
    corpus = tmp_path / "corpus.md"
    corpus.write_text("\n\n".join(["The rain fell on the quiet harbour and the boats rocked."] * 60), encoding="utf-8")
    data = run_json(capsys, "sae-stats", "--corpus", str(corpus), "--tokens", "2000", "--model", str(tiny_model_dir),
                    "--sae", str(folder))
    assert data["features"] == 128 and 2000 <= data["tokens"] < 2000 + 128  # whole sequences of 128
    sae = load_sae(folder)
    assert set(sae.stats) == {"max_act", "frequency", "mean_act", "punct_share", "early_share", "diffmean"}
    assert sae.diffmean is not None and sae.diffmean.shape == (128, sae.d_in)
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    assert labels["version"] == 3 and len(labels["features"]) == 128
    for entry in labels["features"].values():
        # a label is words of the corpus that separate (confidence above chance), else what its tokens are (never
        # hinted), or nothing
        if entry["confidence"] > 0:
            assert entry["confidence"] > 0.5 and all(w.isalpha() and w in "the rain fell on quiet harbour and boats "
                                                     "rocked" for w in entry["label"].split(", "))
        assert set(entry) >= {"label", "confidence", "names", "noun", "common", "contexts", "promoted"}
    assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in sae_dir.iterdir()] + ["labels.json"])
    # --labels-only rewrites the labels and leaves the statistics (and what was calibrated on them) alone
    stats_file = folder / "feature_stats.safetensors"
    before = stats_file.read_bytes()
    (folder / "labels.json").write_text("{}", encoding="utf-8")
    run_json(capsys, "sae-stats", "--corpus", str(corpus), "--tokens", "1000", "--labels-only", "--model",
             str(tiny_model_dir), "--sae", str(folder))
    assert stats_file.read_bytes() == before
    assert len(json.loads((folder / "labels.json").read_text(encoding="utf-8"))["features"]) == 128


def test_calibrate_stores_a_multiple_per_feature_and_keeps_the_others(capsys, tiny_model_dir, sae_dir,
                                                                      tmp_path) -> None:
    import shutil

    from steering.config import Guidance
    from steering.evaluation.calibrate import FACTORS, default_multiple
    from steering.sae.layouts import FEATURE_STATS, load_sae

    folder = tmp_path / "copy"
    shutil.copytree(sae_dir, folder)
    corpus = tmp_path / "corpus.md"
    corpus.write_text("\n\n".join(["The rain fell on the quiet harbour and the boats rocked."] * 40), encoding="utf-8")
    common = ["--model", str(tiny_model_dir), "--sae", str(folder)]
    run_json(capsys, "sae-stats", "--corpus", str(corpus), "--tokens", "1000", *common)
    alive = [int(f) for f in torch.nonzero(load_sae(folder).frequency > 0).flatten()[:3]]

    from steering.evaluation.calibrate import select_features
    from steering.features.ranking import CONFIDENCE_FLOOR

    labels_path = folder / "labels.json"
    kept = labels_path.read_text(encoding="utf-8")
    labels = json.loads(kept)
    hintable = select_features(load_sae(folder), "hintable")
    doubtful = hintable[0]
    labels["features"][str(doubtful)]["confidence"] = CONFIDENCE_FLOOR / 2  # hints never show it
    labels_path.write_text(json.dumps(labels), encoding="utf-8")
    assert doubtful not in select_features(load_sae(folder), "hintable")
    everything = select_features(load_sae(folder), "all")
    assert everything.index(doubtful) >= len(hintable) - 1  # after every feature a hint can show
    labels_path.write_text(kept, encoding="utf-8")

    data = run_json(capsys, "calibrate", "--features", ",".join(map(str, alive[:2])), "--reference", str(corpus),
                    *common)
    assert data["features"] == 2 and data["calibrated"] == data["carried_while_fluent"] <= 2
    sae = load_sae(folder)
    scale, steerability = sae.stats["steer_scale"], sae.stats["steerability"]
    for f in alive[:2]:  # the default strength, or a factor of it the guided continuations carried fluently at
        allowed = [0.0] + [k * default_multiple(sae, f, Guidance()) for k in FACTORS]
        assert min(abs(float(scale[f]) - a) for a in allowed) < 1e-5
        assert 0.0 <= float(steerability[f]) <= 1.0 and (float(scale[f]) > 0) == (float(steerability[f]) >= 0.5)
    others = [f for f in range(128) if f not in alive[:2]]
    assert int((scale > 0).sum()) == data["calibrated"] and not scale[others].any()
    assert bool((steerability[others] == -1).all()) and data["measured"] == 2  # the others: not measured
    data = run_json(capsys, "calibrate", "--features", ",".join(map(str, alive[:3])), *common)
    assert data["skipped"] == 2 and data["features"] == 1  # the first two measured already: resumed after them
    after = load_sae(folder).stats["steer_scale"]
    assert torch.equal(after[alive[:2]], scale[alive[:2]])  # the first two kept theirs
    before = (folder / FEATURE_STATS).read_bytes()
    assert main(["calibrate", "--features", "banana", *common]) != 0
    assert "--features must be" in capsys.readouterr().err
    assert main(["calibrate", "--features", "99999", *common]) != 0
    assert "out of range" in capsys.readouterr().err
    assert (folder / FEATURE_STATS).read_bytes() == before


def test_eval_labels_against_a_shuffled_baseline(capsys, tiny_model_dir, tmp_path) -> None:
    import random

    rnd = random.Random(0)
    words = ["rain", "storm", "harbour", "boats", "money", "bank", "violin", "music", "onion", "soup"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(2):
        (corpus / f"d{i}.md").write_text("\n\n".join(" ".join(rnd.choice(words) for _ in range(30)) + "."
                                                     for _ in range(30)), encoding="utf-8")
    out = tmp_path / "sae"
    assert main(["train-sae", "--model", str(tiny_model_dir), "--layer", "2", "--corpus", str(corpus / "d0.md"),
                 "--tokens", "4000", "--out", str(out), "--batch-size", "256", "--buffer-size", "1024",
                 "--stats-tokens", "3000", "--expansion", "2", "--k", "8"]) == 0
    capsys.readouterr()
    data = run_json(capsys, "eval-labels", "--corpus", str(corpus / "d1.md"), "--tokens", "3000", "--features", "20",
                    "--contexts", "3", "--model", str(tiny_model_dir), "--sae", str(out))
    assert 2 <= data["features"] <= 20 and data["contexts_per_side"] == 3
    for key in ("balanced_accuracy", "shuffled_baseline", "beats_baseline"):
        assert 0 <= data[key] <= 1
    assert "self_explanation" not in data
    data = run_json(capsys, "eval-labels", "--corpus", str(corpus / "d1.md"), "--tokens", "3000", "--features", "20",
                    "--contexts", "3", "--self", "2", "--model", str(tiny_model_dir), "--sae", str(out))
    explained = data["self_explanation"]
    assert explained["features"] == 2 and len(explained["examples"]) == 2
    for key in ("balanced_accuracy", "context_label", "beats_context"):
        assert 0 <= explained[key] <= 1
    for entry in explained["examples"].values():
        assert set(entry) == {"explanation", "words", "label"} and entry["label"]
        assert all(w.strip() in entry["explanation"].lower() for w in entry["words"].split(",") if w)


def test_explanation_label_keeps_real_words_in_order() -> None:
    from steering.evaluation.labels import explanation_label

    assert explanation_label('"the" in Latin, referring to the Latin') == "latin, referring"
    assert explanation_label("Rain falls; storms, rain and thunder.") == "rain, falls, storms"
    assert explanation_label('? "?"?') == ""


def test_prepare_computes_what_the_editor_needs_and_a_second_run_keeps_it(capsys, tiny_model_dir,
                                                                         tmp_path) -> None:
    torch.manual_seed(1)
    sae = SAE(64, 128, "topk", k=8, hook=HookPoint(2, "resid_post"))
    sae.W_enc.data.normal_(0, 0.3)
    sae.W_dec.data.normal_(0, 0.1)
    folder = sae.save(tmp_path / "bare-sae")
    small = tmp_path / "small.md"
    small.write_text("The rain fell on the quiet harbour.\n\n" * 40, encoding="utf-8")
    assert main(["prepare", "--corpus", str(small), "--model", str(tiny_model_dir), "--sae", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "prepare needs at least 20,000" in err and "Nothing was written" in err and "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]

    corpus = tmp_path / "corpus.md"
    sentences = ["The rain fell on the quiet harbour and the boats rocked.", "She read the letter twice and cried.",
                 "The bread rose slowly in the warm kitchen.", "Storm clouds gathered over the grey sea."]
    corpus.write_text("\n\n".join(sentences * 500), encoding="utf-8")
    args = ["prepare", "--corpus", str(corpus), "--tokens", "2000", "--model", str(tiny_model_dir), "--sae",
            str(folder)]
    first = run_json(capsys, *args)
    assert first["statistics"] == "computed" and first["features"] == 128
    assert (folder / "labels.json").is_file() and (folder / "feature_stats.safetensors").is_file()
    from steering.sae.layouts import load_sae

    assert load_sae(folder).diffmean is not None
    again = run_json(capsys, *args)
    assert again["statistics"].startswith("kept")
    if isinstance(first["steerability"], dict):
        assert first["steerability"]["kept_from_before"] == 0
        assert again["steerability"] == {"features": first["steerability"]["features"],
                                         "kept_from_before": first["steerability"]["features"]}


def test_prepare_writes_beside_a_gemma_scope_npz_and_loading_reads_it_back(capsys, tiny_model_dir, tmp_path) -> None:
    import numpy as np

    from steering.sae.layouts import load_sae

    rng = np.random.default_rng(0)
    npz = tmp_path / "layer_2" / "width_16k" / "average_l0_10" / "params.npz"
    npz.parent.mkdir(parents=True)
    np.savez(npz, W_enc=rng.normal(0, 0.3, (64, 128)).astype(np.float32),
             W_dec=rng.normal(0, 0.1, (128, 64)).astype(np.float32), b_enc=np.zeros(128, np.float32),
             b_dec=np.zeros(64, np.float32), threshold=np.full(128, 0.05, np.float32))
    assert load_sae(npz).max_act is None
    corpus = tmp_path / "corpus.md"
    corpus.write_text("\n\n".join(["The bread rose slowly in the warm kitchen.", "Storm clouds gathered over the sea."]
                                  * 1000), encoding="utf-8")
    got = run_json(capsys, "prepare", "--corpus", str(corpus), "--tokens", "2000", "--model", str(tiny_model_dir),
                   "--sae", str(npz))
    assert got["statistics"] == "computed" and got["sae"] == str(npz.parent)
    assert sorted(p.name for p in npz.parent.iterdir()) == ["feature_stats.safetensors", "labels.json", "params.npz"]
    again = load_sae(npz)
    assert again.max_act is not None and again.diffmean is not None
