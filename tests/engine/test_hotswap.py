"""Adapter hot-swap on the real built-in model with an adapter made by the real trainer."""

from __future__ import annotations

import json
import shutil

import pytest

from sftchat.adapters import AdapterError
from sftchat.config import GenerationSettings
from sftchat.engine import ChatEngine

from conftest import CURATED

GREEDY = GenerationSettings(max_new_tokens=40, temperature=0)


def test_swap_reuses_base_weights_and_matches_a_fresh_load(trained_workspace, fresh_builtin):
    from peft import PeftModel

    from sftchat.models.loader import load_model

    engine = ChatEngine(fresh_builtin, "alpaca", trained_workspace / "adapters")
    question, answer = CURATED[0]
    before = engine.generate(question, settings=GREEDY).collect()
    q_proj = fresh_builtin.model.model.layers[0].self_attn.q_proj
    weight, pointer = q_proj.weight, q_proj.weight.data_ptr()

    swap = engine.use_adapter("latest")
    assert swap.name == "first" and swap.loaded
    assert engine.active_adapter == "first"
    swapped = engine.generate(question, settings=GREEDY).collect()

    # The base was not reloaded: the very same quantized tensor, at the same address.
    q_base = fresh_builtin.model.model.layers[0].self_attn.q_proj.base_layer
    assert q_base.weight is weight and q_base.weight.data_ptr() == pointer
    assert swapped == answer and swapped != before

    # A freshly loaded base + the same adapter generates the same answer.
    reference = load_model("builtin", "cpu", quantize=True)
    reference.model = PeftModel.from_pretrained(reference.model,
                                                str(trained_workspace / "adapters" / "first"))
    fresh_engine = ChatEngine(reference, "alpaca")
    assert fresh_engine.generate(question, settings=GREEDY).collect() == swapped

    # Back to the base model: the original answer again; and forth without reloading.
    assert engine.use_adapter("none").name is None
    assert engine.generate(question, settings=GREEDY).collect() == before
    again = engine.use_adapter("first")
    assert not again.loaded, "an already loaded adapter must not be read from disk again"
    assert engine.generate(question, settings=GREEDY).collect() == answer


def test_switch_between_two_adapters(trained_workspace, fresh_builtin, tmp_path):
    adapters = tmp_path / "adapters"
    shutil.copytree(trained_workspace / "adapters" / "first", adapters / "first")
    # A second adapter: the same weights under another name, published later.
    shutil.copytree(trained_workspace / "adapters" / "first", adapters / "second")
    meta_path = adapters / "second" / "sftchat.json"
    meta = json.loads(meta_path.read_text())
    meta["finished_at"] = "9999-01-01T00:00:00+00:00"
    meta_path.write_text(json.dumps(meta))
    engine = ChatEngine(fresh_builtin, "alpaca", adapters)
    assert engine.use_adapter("latest").name == "second"
    assert engine.use_adapter("first").name == "first"
    assert set(engine.loaded_adapters) == {"first", "second"}
    engine.unload_adapter("first")
    assert engine.active_adapter is None and engine.loaded_adapters == ["second"]


def test_adapter_for_another_base_is_refused(trained_workspace, builtin_model, tmp_path):
    adapters = tmp_path / "adapters"
    shutil.copytree(trained_workspace / "adapters" / "first", adapters / "other")
    meta_path = adapters / "other" / "sftchat.json"
    meta = json.loads(meta_path.read_text())
    meta["base_model"] = {"model": "Qwen/Qwen2.5-0.5B", "fingerprint": "0" * 64}
    meta_path.write_text(json.dumps(meta))
    engine = ChatEngine(builtin_model, "alpaca", adapters)
    with pytest.raises(AdapterError, match="trained on base model 'Qwen/Qwen2.5-0.5B'"):
        engine.use_adapter("other")
    assert engine.active_adapter is None


def test_corrupted_adapter_is_a_clear_error(trained_workspace, builtin_model, tmp_path):
    adapters = tmp_path / "adapters"
    shutil.copytree(trained_workspace / "adapters" / "first", adapters / "broken")
    (adapters / "broken" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    engine = ChatEngine(builtin_model, "alpaca", adapters)
    with pytest.raises(AdapterError, match="could not be loaded"):
        engine.use_adapter("broken")


def test_unknown_adapter_name(trained_workspace, builtin_model):
    engine = ChatEngine(builtin_model, "alpaca", trained_workspace / "adapters")
    with pytest.raises(AdapterError, match="no adapter named 'nope'"):
        engine.use_adapter("nope")
