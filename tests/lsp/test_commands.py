"""`tinymorph.*` commands: steering add / remove / clear / list, search, explain, status; malformed arguments are
InvalidParams errors that change nothing; the steering set persists in the workspace."""

from __future__ import annotations

import json

import pytest

from .conftest import client_fixture, command

client = client_fixture(suggestion=False)


async def test_steering_round_trip_and_persistence(client) -> None:
    await command(client, "tinymorph.steer.clear")
    listed = await command(client, "tinymorph.steer.add", {"feature": 3, "strength": 2.5})
    assert listed["steering"][0]["feature"] == 3 and listed["steering"][0]["strength"] == 2.5
    assert listed["steering"][0]["label"]  # the feature's label, for display
    # a clamp's target is its `value`; `strength` is the spelling older clients send for it
    await command(client, "tinymorph.steer.add", {"feature": 5, "mode": "clamp", "strength": 1.0})
    await command(client, "tinymorph.steer.add", {"feature": 3, "strength": -1})  # replaces feature 3
    listed = await command(client, "tinymorph.steer.list")
    assert [(e["feature"], e["mode"], e.get("value", e.get("strength"))) for e in listed["steering"]] == [
        (5, "clamp", 1.0), (3, "add", -1.0)]
    assert "strength" not in listed["steering"][0]
    listed = await command(client, "tinymorph.steer.add", {"feature": 5, "mode": "clamp", "value": 2.5})
    assert listed["steering"][-1] == {"mode": "clamp", "feature": 5, "value": 2.5,
                                      "label": listed["steering"][-1]["label"]}
    path = client.workspace_dir / ".tinymorph" / "steering.json"
    assert listed["file"] == str(path)
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert [e["feature"] for e in on_disk["steering"]] == [3, 5]
    assert not [p for p in path.parent.iterdir() if p.name != "steering.json"]  # no temporary files left
    listed = await command(client, "tinymorph.steer.remove", {"feature": 5})
    assert [e["feature"] for e in listed["steering"]] == [3]
    assert [e["feature"] for e in json.loads(path.read_text())["steering"]] == [3]
    listed = await command(client, "tinymorph.steer.clear")
    assert listed["steering"] == [] and json.loads(path.read_text())["steering"] == []


@pytest.mark.parametrize("args,message", [
    ([{"feature": "three"}], "'feature' must be a whole number"),
    ([{"feature": 1.5}], "'feature' must be a whole number"),
    ([{"strength": 2}], "missing 'feature'"),
    ([{"feature": 1, "mode": "boost"}], "mode must be one of"),
    ([{"feature": 1, "strength": True}], "'strength' must be a finite number"),
    ([{"feature": 10_000}], "does not exist"),
    ([{"feature": -1}], "feature must be a whole number >= 0"),
    (["feature=1"], "takes one object argument"),
    ([{"feature": 1}, {"feature": 2}], "takes one object argument"),
])
async def test_malformed_steer_add_changes_nothing(client, args, message) -> None:
    await command(client, "tinymorph.steer.clear")
    await command(client, "tinymorph.steer.add", {"feature": 2})
    with pytest.raises(Exception, match=message):
        await command(client, "tinymorph.steer.add", *args)
    assert [e["feature"] for e in (await command(client, "tinymorph.steer.list"))["steering"]] == [2]


async def test_remove_of_a_missing_feature_is_an_error(client) -> None:
    await command(client, "tinymorph.steer.clear")
    with pytest.raises(Exception, match="not in the steering set"):
        await command(client, "tinymorph.steer.remove", {"feature": 7})


async def test_search_and_explain(client) -> None:
    explained = await command(client, "tinymorph.features.explain", {"feature": 4})
    assert explained["feature"] == 4 and "self" not in explained
    own = (await command(client, "tinymorph.features.explain", {"feature": 4, "self": True}))["self"]
    assert own["feature"] == 4 and len(own["sweep"]) == 5 and isinstance(own["text"], str)
    with pytest.raises(Exception, match="'self' must be true or false"):
        await command(client, "tinymorph.features.explain", {"feature": 4, "self": "yes"})
    assert len(explained["promoted"]) > 0 and explained["max_act"] is not None
    found = await command(client, "tinymorph.features.search", {"query": "rain"})  # a word of the SAE's corpus
    assert found["query"] == "rain" and found["features"]
    for hit in found["features"]:
        assert set(hit) == {"feature", "score", "label", "steerability", "amplify"} and hit["score"] > 0
        assert hit["steerability"] is None and hit["amplify"] == "not measured"  # this SAE was never calibrated
    with pytest.raises(Exception, match="'query' must not be empty"):
        await command(client, "tinymorph.features.search", {"query": "  "})
    with pytest.raises(Exception, match=r"does not exist|out of range|feature"):
        await command(client, "tinymorph.features.explain", {"feature": 99_999})


async def test_status(client) -> None:
    status = await command(client, "tinymorph.status")
    assert status["state"] == "ready" and status["error"] is None
    assert status["engine"]["device"] == "cpu" and status["engine"]["d_sae"] == 128
    assert status["engine"]["hook"] == "blocks.2.hook_resid_post"
    assert isinstance(status["queueDepth"], int) and isinstance(status["latencyMs"], dict)
    settings = status["settings"]  # camelCase on the wire, as the client writes them
    assert settings["suggestion"] is False and settings["debounceMs"] == 50 and "debounce_ms" not in settings


async def test_unknown_command_is_an_error(client) -> None:
    with pytest.raises(Exception, match="not defined"):
        await command(client, "tinymorph.nope")


RANGE = {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 1}}
BAD_ARGUMENTS = [
    ("tinymorph.steer.add", {"feature": 3, "strength": 1e9}, "'strength' must be between -10 and 10, not 1000000000.0"),
    ("tinymorph.steer.add", {"feature": 3, "strength": "abc"}, "'strength' must be a finite number, not 'abc'"),
    ("tinymorph.steer.add", {"feature": 3, "mode": "clamp", "value": -1e7}, "'value' must be between -10000 and 10000"),
    ("tinymorph.steer.add", {"feature": 99_999}, "feature 99999 does not exist"),
    ("tinymorph.steer.remove", {"feature": "x"}, "'feature' must be a whole number, not 'x'"),
    ("tinymorph.features.search", {"query": "rain", "limit": 10_000}, "'limit' must be between 1 and 200"),
    ("tinymorph.features.explain", {"feature": -4}, "Feature -4 is out of range: this SAE has features 0 to"),
    ("tinymorph.watch.add", {"feature": 3, "threshold": 1e12}, "threshold must be at most 10000"),
    ("tinymorph.watch.add", {"feature": 3, "threshold": -1}, "threshold must be a positive finite number"),
    ("tinymorph.preset.create", {"uri": "file:///x.md", "version": 1, "range": RANGE, "strength": 50},
     "'strength' must be between -10 and 10"),
    ("tinymorph.preset.create", {"uri": "file:///x.md", "version": 1, "range": {}},
     "tinymorph.preset.create: range must be an LSP range"),
    ("tinymorph.features.byExample", {"uri": "file:///x.md", "version": 1, "range": RANGE, "limit": 0},
     "'limit' must be between 1 and 50"),
    ("tinymorph.rewrite", {"uri": "file:///x.md", "version": "1", "range": RANGE},
     "tinymorph.rewrite: expected {uri: string, version: integer, range}"),
]


@pytest.mark.parametrize(("name", "argument", "message"), BAD_ARGUMENTS, ids=[b[0] + "-" + str(i) for i, b in
                                                                               enumerate(BAD_ARGUMENTS)])
async def test_bad_arguments_get_one_clear_message(client, name, argument, message) -> None:
    await command(client, "tinymorph.steer.clear")
    with pytest.raises(Exception) as info:
        await command(client, name, argument)
    text = str(info.value)
    assert message in text
    assert text.count("tinymorph.") <= 1 + message.count("tinymorph."), f"the command named more than once: {text}"
    assert "Traceback" not in text and "\n" not in text.strip()
    assert (await command(client, "tinymorph.steer.list"))["steering"] == []


async def test_every_command_refuses_a_non_object_argument_clearly(client) -> None:
    commands = client.init_result.capabilities.execute_command_provider.commands
    assert len(commands) >= 15
    for name in commands:
        with pytest.raises(Exception) as info:
            await command(client, name, "feature=1", 2)
        text = str(info.value)
        assert f"{name} takes one object argument" in text, text
        assert text.count(name) == 1 and "Traceback" not in text, text
