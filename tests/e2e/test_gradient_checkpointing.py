"""The real-model default recipe with gradient checkpointing: distillation, the quiet
penalty (hooks on every LoRA layer) and preferences (a pair riding in its example's pass, a
bad answer in a pass of its own) on a real-shaped random model (Qwen2: GQA, q/k/v biases,
tied embeddings) — the recipe every GPU run takes (`gradient_checkpointing = auto` turns it on
on CUDA). Recomputation must not change a number: every step's losses and gradient norm equal
those of the same run without it. Until the loss terms held their hooks through the backward,
this run ended in torch's CheckpointError."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from shaped_models import qwen2_shaped

from sftchat.config import TrainingSettings, load_settings
from sftchat.dataset.store import ExampleStore

EXAMPLES = [("What is the capital of France?", "Paris is the capital of France."),
            ("Name a primary color.", "Red is a primary color."),
            ("What is two plus two?", "Two plus two is four."),
            ("Say hello in Spanish.", "Hola!")]


@pytest.fixture(scope="module")
def shaped_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpointing")
    model = qwen2_shaped(root / "qwen2-shaped")
    workspace = root / "ws"
    workspace.mkdir()
    settings = load_settings(workspace=str(workspace), model=str(model), device="cpu")
    with ExampleStore(settings.data_dir) as store:
        ids = [store.add(instruction, response) for instruction, response in EXAMPLES]
        store.add_rejected(EXAMPLES[0][0], "Lyon is the capital of France.",
                           example_id=ids[0])
        store.add_rejected("Tell me a joke.", "I refuse to tell jokes.")
    return settings


def _train(settings, checkpointing: str, name: str):
    from sftchat.training.trainer import run_training

    training = dataclasses.replace(TrainingSettings(), max_steps=4, early_stop=False,
                                   gradient_checkpointing=checkpointing,
                                   checkpoint_every=0)
    events = []
    run_training(settings, training, events.append, name=name, stop=threading.Event())
    return [event for event in events if event["event"] == "step"], events


def test_default_recipe_trains_the_same_with_gradient_checkpointing(shaped_workspace):
    defaults = TrainingSettings()
    assert (defaults.regularize, defaults.quiet_weight > 0, defaults.objective) == \
        ("distill", True, "auto")   # the quiet penalty's hooks are on
    on, started = _train(shaped_workspace, "on", "checkpointed")
    off, _ = _train(shaped_workspace, "off", "plain")
    start = next(event for event in started if event["event"] == "started")
    assert start["objective"] == "dpo+kto" and start["regularize"] == "distill"
    assert len(on) == len(off) == 4
    for with_it, without in zip(on, off):
        for figure in ("loss", "anchor_loss", "preference_loss", "grad_norm"):
            assert with_it[figure] == without[figure], (figure, with_it, without)
    assert on[-1]["loss"] != on[0]["loss"]     # it trained
