"""Adapter hot-swap on the real built-in model with an adapter made by the real trainer."""

from __future__ import annotations

import json
import shutil

import pytest

from sftchat.adapters.registry import AdapterError
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
    base_parameters = dict(fresh_builtin.model.named_parameters())

    swap = engine.use_adapter("latest")
    assert swap.name == "first" and swap.loaded
    assert engine.active_adapter == "first"
    swapped = engine.generate(question, settings=GREEDY).collect()

    # The base was not reloaded: every base parameter is the very same object. (Their
    # storage address may change: bitsandbytes' CPU kernels repack 4-bit weights in place.)
    after = {name.replace(".base_layer", ""): parameter
             for name, parameter in fresh_builtin.model.named_parameters() if "lora_" not in name}
    assert after.keys() == base_parameters.keys()
    assert all(after[name] is base_parameters[name] for name in base_parameters)
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


def test_loaded_adapters_are_evicted_least_recently_used(trained_workspace, fresh_builtin,
                                                         tmp_path):
    adapters = tmp_path / "adapters"
    for name in ("a", "b", "c"):  # the same weights under three names
        shutil.copytree(trained_workspace / "adapters" / "first", adapters / name)
    engine = ChatEngine(fresh_builtin, "alpaca", adapters)
    engine.slots.max_loaded = 2
    assert engine.use_adapter("a").loaded and engine.use_adapter("b").loaded
    engine.use_adapter("a")                      # a is now the more recent of the two
    assert engine.use_adapter("c").loaded
    assert sorted(engine.loaded_adapters) == ["a", "c"]   # b, least recently used, left
    assert engine.active_adapter == "c"
    # Evicted means unloaded, not lost: it reloads from disk and answers as before.
    assert engine.use_adapter("b").loaded and sorted(engine.loaded_adapters) == ["b", "c"]
    question, answer = CURATED[0]
    assert engine.generate(question, settings=GREEDY).collect() == answer
    # The adapter answering is never the one evicted, even when it is the oldest.
    engine.use_adapter("c")
    engine.slots.max_loaded = 1
    # An answer as a (a compare column) loads it while c is the chat's: b goes, c stays.
    assert engine.generate(question, settings=GREEDY, adapter="a").collect() == answer
    assert sorted(engine.loaded_adapters) == ["a", "c"]
    assert engine.active_adapter == "c"


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
    # The failed load left the base model untouched: no LoRA layers were left behind.
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(isinstance(m, BaseTunerLayer) for m in builtin_model.model.modules())
    assert engine.active_adapter is None


def test_failed_load_after_a_good_one_keeps_the_good_one(trained_workspace, fresh_builtin,
                                                         tmp_path):
    adapters = tmp_path / "adapters"
    shutil.copytree(trained_workspace / "adapters" / "first", adapters / "good")
    shutil.copytree(trained_workspace / "adapters" / "first", adapters / "broken")
    (adapters / "broken" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    engine = ChatEngine(fresh_builtin, "alpaca", adapters)
    engine.use_adapter("good")
    with pytest.raises(AdapterError):
        engine.use_adapter("broken")
    assert engine.active_adapter == "good" and engine.loaded_adapters == ["good"]
    question, answer = CURATED[0]
    assert engine.generate(question, settings=GREEDY).collect() == answer


def test_unknown_adapter_name(trained_workspace, builtin_model):
    engine = ChatEngine(builtin_model, "alpaca", trained_workspace / "adapters")
    with pytest.raises(AdapterError, match="no adapter named 'nope'"):
        engine.use_adapter("nope")


def test_adapter_with_wrong_shapes_is_refused_and_leaves_the_base_alone(
        trained_workspace, fresh_builtin, tmp_path):
    """An adapter without sftchat metadata (made elsewhere) whose tensors do not fit."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "adapters" / "foreign"
    shutil.copytree(trained_workspace / "adapters" / "first", folder)
    (folder / "sftchat.json").unlink()
    weights = load_file(str(folder / "adapter_model.safetensors"))
    name = next(key for key in weights if "lora_A" in key)
    weights[name] = weights[name][:, :-64].contiguous()
    save_file(weights, str(folder / "adapter_model.safetensors"))
    engine = ChatEngine(fresh_builtin, "alpaca", tmp_path / "adapters")
    with pytest.raises(AdapterError, match="shape"):
        engine.use_adapter("foreign")
    assert not any(isinstance(m, BaseTunerLayer) for m in fresh_builtin.model.modules())


def test_a_prepared_slot_takes_the_published_adapter(trained_workspace, fresh_builtin):
    """Layers injected while the trainer runs are filled by the adapter it publishes."""
    from sftchat.config import load_settings

    preset = load_settings(workspace=str(trained_workspace)).training
    engine = ChatEngine(fresh_builtin, "alpaca", trained_workspace / "adapters")
    question, answer = CURATED[1]
    before = engine.generate(question, settings=GREEDY).collect()
    engine.prepare_slot(preset.rank, preset.alpha, preset.dropout)
    # An empty slot changes nothing while the base model answers.
    assert engine.generate(question, settings=GREEDY).collect() == before
    slot_key = engine.slots.prepared_key
    swap = engine.use_adapter("first")
    assert swap.loaded and engine.slots.prepared_key is None
    assert engine.slots.key_of("first") == slot_key
    assert engine.generate(question, settings=GREEDY).collect() == answer


def test_a_slot_for_another_config_is_left_alone(trained_workspace, fresh_builtin):
    engine = ChatEngine(fresh_builtin, "alpaca", trained_workspace / "adapters")
    engine.prepare_slot(rank=4, alpha=8)
    slot_key = engine.slots.prepared_key
    engine.use_adapter("first")
    assert engine.slots.prepared_key == slot_key  # still waiting for a rank-4 adapter
    question, answer = CURATED[0]
    assert engine.generate(question, settings=GREEDY).collect() == answer


def test_an_adapter_answers_through_the_template_it_was_trained_with(trained_workspace,
                                                                     fresh_builtin):
    # The app is now set to ChatML, but `first` was trained with Alpaca (auto, for the
    # built-in base model): it must still be asked in Alpaca, or it would not answer.
    engine = ChatEngine(fresh_builtin, "chatml", trained_workspace / "adapters")
    question, answer = CURATED[0]
    assert engine.template == "chatml"
    base_prompt_tokens = engine.generate(question, settings=GREEDY).prompt_tokens
    engine.use_adapter("first")
    assert engine.template == "alpaca"
    generation = engine.generate(question, settings=GREEDY)
    assert generation.collect() == answer
    assert generation.prompt_tokens != base_prompt_tokens
    engine.use_adapter("none")
    assert engine.template == "chatml"
