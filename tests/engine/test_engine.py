"""ChatEngine generation on the real built-in model: streaming, greedy/sampling, stops, cancel."""

from __future__ import annotations

import threading

import pytest

from sftchat.config import GenerationSettings
from sftchat.decoding import cut_at_stop, safe_length
from sftchat.engine import ChatEngine
from sftchat.prompts import Turn

GREEDY = GenerationSettings(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def engine(builtin_model):
    return ChatEngine(builtin_model, "alpaca")


def test_streams_pieces_that_add_up_to_the_text(engine):
    generation = engine.generate("Tell me something.", settings=GREEDY)
    pieces = list(generation)
    assert len(pieces) > 1, "the answer should arrive in several pieces"
    assert "".join(pieces) == generation.text
    assert generation.finish_reason in ("eos", "length", "stop")
    assert 0 < generation.new_tokens <= GREEDY.max_new_tokens
    assert generation.first_token_seconds is not None


def test_greedy_is_deterministic(engine):
    first = engine.generate("Hello?", settings=GREEDY).collect()
    second = engine.generate("Hello?", settings=GREEDY).collect()
    assert first == second and first


def test_sampling_follows_the_seed(engine):
    def sample(seed):
        settings = GenerationSettings(max_new_tokens=24, temperature=1.0, top_p=1.0, seed=seed)
        return engine.generate("Hello?", settings=settings).collect()

    assert sample(1) == sample(1)
    assert len({sample(1), sample(2), sample(3)}) > 1


def test_max_new_tokens_bounds_the_answer(engine):
    generation = engine.generate("Go on.", settings=GenerationSettings(max_new_tokens=5,
                                                                       temperature=0))
    generation.collect()
    assert generation.new_tokens <= 5


def test_cancel_from_another_thread_stops_generation(engine, monkeypatch):
    # No stop token or string can end this answer (on any CPU): only the cancel does.
    import sftchat.engine

    monkeypatch.setattr(sftchat.engine, "stop_token_ids", lambda template, tokenizer: [])
    monkeypatch.setattr(sftchat.engine, "stop_strings", lambda template: [])
    cancel = threading.Event()
    settings = GenerationSettings(max_new_tokens=2000, temperature=0)
    generation = engine.generate("Talk forever.", settings=settings, cancel=cancel)
    got_first = threading.Event()

    def consume():
        for _ in generation:
            got_first.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert got_first.wait(60)
    cancel.set()
    consumer.join(60)
    assert not consumer.is_alive()
    assert generation.finish_reason == "cancelled"
    assert generation.new_tokens < 2000


def test_abandoning_the_iterator_frees_the_engine(engine):
    generation = engine.generate("Talk.", settings=GenerationSettings(max_new_tokens=2000,
                                                                      temperature=1.0, seed=1))
    iterator = iter(generation)
    next(iterator)
    iterator.close()  # the consumer walks away mid-answer
    # The next generation is not blocked behind the abandoned one.
    assert engine.generate("Hi", settings=GREEDY).collect() is not None


def test_huge_prompt_is_truncated_with_a_notice_not_a_crash(engine):
    generation = engine.generate("please " * 60_000 + "answer.", settings=GREEDY)
    assert generation.notice and "too long" in generation.notice
    assert generation.prompt_tokens <= engine.max_prompt_tokens(GREEDY.max_new_tokens)
    generation.collect()
    assert generation.finish_reason in ("eos", "length", "stop")


def test_history_is_rendered_into_the_prompt(engine):
    alone = engine.generate("And Spain?", settings=GREEDY)
    after = engine.generate("And Spain?", history=[Turn("Capital of France?", "Paris.")],
                            settings=GREEDY)
    assert after.prompt_tokens > alone.prompt_tokens
    alone.collect(), after.collect()


def test_stop_strings_cut_a_new_instruction():
    text = "Sure.\n\n### Instruction:\nAnother question"
    assert cut_at_stop(text, ("### Instruction:",)) == ("Sure.", True)
    assert cut_at_stop("plain", ("### Instruction:",)) == ("plain", False)


def test_partial_stop_string_and_partial_characters_are_held_back():
    assert safe_length("Sure.\n\n###", ("### Instruction:",)) == len("Sure.")
    assert safe_length("Sure.\n\n### Instr", ("### Instruction:",)) == len("Sure.")
    assert safe_length("café\ufffd", ()) == len("café")
    assert safe_length("ok then", ("### Instruction:",)) == len("ok then")


def test_incremental_decoding_equals_full_decoding(builtin_model):
    from sftchat.decoding import IncrementalDecoder

    tokenizer = builtin_model.tokenizer
    text = "Hello — こんにちは 🙂!\n\n```py\nprint('é')\n```"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.add([token]) for token in ids]
    assert "".join(pieces) + decoder.flush() == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 5, "text must arrive as it is decoded"


def test_greedy_tokens_are_exactly_what_model_generate_picks(builtin_model):
    import torch

    from sftchat.decoding import decode_tokens
    from sftchat.prompts import encode_prompt

    ids = encode_prompt(builtin_model.tokenizer, "alpaca", "Tell me about the sea.").ids
    settings = GenerationSettings(max_new_tokens=40, temperature=0)
    ours = list(decode_tokens(builtin_model.model, ids, settings, stop_ids=[-1],
                              cancel=threading.Event()))
    with torch.inference_mode():
        reference = builtin_model.model.generate(
            torch.tensor([ids]), max_new_tokens=40, do_sample=False, temperature=None,
            top_p=None, top_k=None, eos_token_id=None, min_new_tokens=40,
            pad_token_id=builtin_model.tokenizer.pad_token_id)
    assert ours == reference[0, len(ids):].tolist()


def test_top_p_keeps_only_the_nucleus():
    import torch

    from sftchat.decoding import _sample

    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    settings = GenerationSettings(temperature=1.0, top_p=0.8)
    generator = torch.Generator().manual_seed(0)
    drawn = {_sample(logits.clone(), settings, generator) for _ in range(300)}
    assert drawn == {0, 1}
