"""The chat keeps bitsandbytes' fast packed 4-bit path (issue 18): answering packs the weights
where the CPU can (the packed kernel decodes several times faster), and adapters still swap
into the packed model and give their answers — on every CPU path this machine can take
(`cpu_path`, tests/cpu_paths.py). Only training keeps weights out of that layout
(tests/unit/test_4bit_gradients.py)."""

from __future__ import annotations

from sftchat.config import GenerationSettings
from sftchat.engine import ChatEngine

from conftest import CURATED

GREEDY = GenerationSettings(max_new_tokens=40, temperature=0)


def test_answers_and_swaps_on_each_cpu_path(cpu_path, trained_workspace):
    from sftchat.models import cpu_4bit
    from sftchat.models.loader import load_model
    from sftchat.training.evaluation import replay
    from sftchat.training.loss import LossFunction
    from sftchat.prompts import encode_example

    loaded = load_model("builtin", "cpu", quantize=True)
    engine = ChatEngine(loaded, "alpaca", trained_workspace / "adapters")
    question, answer = CURATED[0]
    before = engine.generate(question, settings=GREEDY).collect()
    packed = cpu_4bit.packed_layers(loaded.model)
    assert bool(packed) == (cpu_path != "plain"), packed[:3]

    swap = engine.use_adapter("first")   # into the packed model
    assert swap.loaded and engine.active_adapter == "first"
    answers = [engine.generate(q, settings=GREEDY).collect() for q, _ in CURATED]
    assert answers == [a for _, a in CURATED]
    # Reviews and `sftchat eval` replay teacher-forced on the same model: all reproduced.
    function = LossFunction(engine.model, loaded.tokenizer.pad_token_id, "cpu")
    examples = [encode_example(loaded.tokenizer, "alpaca", {"instruction": q, "response": a},
                               256) for q, a in CURATED]
    with engine.slots.answering_context():
        assert replay(function, examples).reproduced == len(CURATED)
    # The swap did not unpack anything, and the base answers as before.
    assert len(cpu_4bit.packed_layers(loaded.model)) == len(packed)
    engine.use_adapter("none")
    assert engine.generate(question, settings=GREEDY).collect() == before != answer
