"""The decode loop: equals greedy decoding, streams text, honours stop strings, seeds and cancellation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.config import SamplingConfig
from steering.engine import Engine, Spellings
from steering.errors import TinymorphError
from steering.runtime.decode import (
    CancelToken,
    Detokenizer,
    StopScanner,
    decode_token_ids,
    pick_token,
    prompt_ids,
)


def _greedy_reference(lm, ids: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding without a KV cache: the whole sequence through the model at every step."""
    seq = ids.clone()
    out = []
    with torch.no_grad():
        for _ in range(n):
            token = int(lm.model(input_ids=seq).logits[0, -1].argmax())
            out.append(token)
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    return out


def test_unsteered_output_equals_plain_greedy_decoding(lm) -> None:
    ids = prompt_ids(lm, "Once upon a time")
    ours = list(decode_token_ids(lm, ids, SamplingConfig(max_tokens=16, stop_at_eos=False)))
    assert ours == _greedy_reference(lm, ids, 16)
    with torch.no_grad():
        hf = lm.model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours == hf[0, ids.shape[1]:].tolist()


def test_engine_generate_text_equals_decoded_greedy_tokens(lm) -> None:
    engine = Engine(lm)
    ids = prompt_ids(lm, "abc")
    tokens = _greedy_reference(lm, ids, 12)
    eos = lm.eos_token_ids
    if any(t in eos for t in tokens):
        tokens = tokens[: next(i for i, t in enumerate(tokens) if t in eos)]
    text = "".join(engine.generate("abc", sampling=SamplingConfig(max_tokens=12)))
    assert text == lm.tokenizer.decode(tokens, skip_special_tokens=True)


def test_cancel_stops_within_one_step(llama) -> None:
    calls: list[int] = []
    handle = llama.model.register_forward_hook(lambda *_a: calls.append(1))
    cancel = CancelToken()
    try:
        stream = decode_token_ids(llama, prompt_ids(llama, "hi"), SamplingConfig(max_tokens=50, stop_at_eos=False),
                                  cancel=cancel)
        for i, _token in enumerate(stream):
            if i == 2:
                cancel.cancel()
                before = len(calls)
        assert len(calls) == before == 3
    finally:
        handle.remove()


def test_cancel_before_start_runs_nothing(llama) -> None:
    cancel = CancelToken()
    cancel.cancel()
    assert list(Engine(llama).generate("hi", cancel=cancel)) == []


def test_same_seed_same_sample_and_tiny_top_p_is_greedy(llama) -> None:
    engine = Engine(llama)

    def run(**kw) -> str:
        return "".join(engine.generate("The", sampling=SamplingConfig(max_tokens=20, stop_at_eos=False, **kw)))

    assert run(temperature=1.0, seed=7) == run(temperature=1.0, seed=7)
    samples = {run(temperature=1.5, seed=s) for s in range(4)}
    assert len(samples) > 1
    assert run(temperature=1.0, top_p=1e-6, seed=3) == run()


def test_pick_token_top_p_keeps_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    sampling = SamplingConfig(temperature=1.0, top_p=0.7)
    gen = torch.Generator().manual_seed(0)
    assert {pick_token(logits, sampling, gen) for _ in range(200)} == {0, 1}


def test_max_tokens_bounds_the_output(llama) -> None:
    ids = prompt_ids(llama, "x")
    assert len(list(decode_token_ids(llama, ids, SamplingConfig(max_tokens=5, stop_at_eos=False)))) == 5
    assert list(decode_token_ids(llama, ids, SamplingConfig(max_tokens=0))) == []


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["Hello ", "wor", "ld. More"], ("world",), "Hello "),
        (["ab", "c\n", "\nnext"], ("\n\n",), "abc"),
        (["no stop here"], ("zzz",), "no stop here"),
        (["a<", "/", "x> b"], ("</x>", "b"), "a"),
        (["tail <"], ("<end>",), "tail <"),
    ],
)
def test_stop_strings_cut_across_pieces(pieces: list[str], stops: tuple[str, ...], expected: str) -> None:
    scanner = StopScanner(stops)
    out = ""
    for piece in pieces:
        out += scanner.push(piece)
        if scanner.stopped:
            break
    else:
        out += scanner.flush()
    assert out == expected


def test_stop_string_ends_generation(llama) -> None:
    engine = Engine(llama)
    full = "".join(engine.generate("The", sampling=SamplingConfig(max_tokens=20, stop_at_eos=False)))
    assert len(full) > 4
    stop = full[3:5]
    cut = "".join(engine.generate("The", sampling=SamplingConfig(max_tokens=20, stop_at_eos=False, stop=(stop,))))
    assert cut == full[: full.find(stop)]


def test_detokenizer_holds_back_partial_utf8(llama) -> None:
    text = "日本 😀 ok"
    ids = llama.tokenizer(text)["input_ids"]
    detok = Detokenizer(llama.tokenizer, [])
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_sampling_config_rejects_bad_values() -> None:
    with pytest.raises(TinymorphError):
        SamplingConfig(temperature=-1)
    with pytest.raises(TinymorphError):
        SamplingConfig(top_p=0)
    with pytest.raises(TinymorphError):
        SamplingConfig(steer_positions="everywhere")  # type: ignore[arg-type]
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(TinymorphError, match="repetition_penalty"):
            SamplingConfig(repetition_penalty=bad)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    from steering.runtime.decode import penalise_repeats

    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    out = penalise_repeats(logits, [[0, 1, 1], []], 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 3.0, 0.5], [1.0, 1.0, 1.0, 1.0]]))
    assert penalise_repeats(logits, [[0]], 1.0) is logits


def test_repetition_penalty_breaks_a_greedy_loop(llama) -> None:
    ids = prompt_ids(llama, "the the the the the the")
    plain = list(decode_token_ids(llama, ids, SamplingConfig(max_tokens=24, stop_at_eos=False)))
    penalised = list(decode_token_ids(llama, ids, SamplingConfig(max_tokens=24, stop_at_eos=False,
                                                                 repetition_penalty=3.0)))
    assert len(set(penalised)) > len(set(plain))
    assert plain[0] == penalised[0]  # nothing generated yet: the first token is the same


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(alphabet=" abtéh", max_size=5), max_size=60), left=st.text(alphabet=" abtéh", min_size=1,
                                                                                         max_size=6))
def test_spellings_find_what_a_pass_over_the_vocabulary_finds(texts: list[str], left: str) -> None:
    # token healing's lookup: every token that starts with what is left of the word, or begins it, in id order
    expected = [i for i, t in enumerate(texts) if t and (t.startswith(left) or left.startswith(t))]
    assert Spellings(texts).fitting(left) == expected
