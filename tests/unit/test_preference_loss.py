"""The preference objective's parts: which rejected answers teach what, the scores read off
one forward (log-probabilities, a rejected answer's telltale given or avoided), and the
losses at the start of a run (the adapter equals the reference: DPO's log 2, KTO's ½)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import with_lora

from sftchat.config import TrainingSettings
from sftchat.training import trainer
from sftchat.training.errors import TrainingError
from sftchat.training.head import LearnedLogits
from sftchat.training.loss import LossFunction
from sftchat.training.preference import (AVOID, PAIR, PreferenceLoss, encode_items,
                                         plan_objective, span_scores, telltale_tokens)
from sftchat.training.terms import Pass, StepFigures, pass_loss, prepare_references

RECORDS = [{"id": 1, "instruction": "Capital of France?", "input": "", "output": "Paris."},
           {"id": 2, "instruction": "A color?", "input": "", "output": "Blue."}]


def loose_loss(preferences, loss_function, indices, count, backward=False):
    """(weighted loss, figures) of items `indices` in one pass of a step of `count` items,
    as the training loop runs it."""
    figures = StepFigures([], list(indices))
    (sequences, read), = preferences.loose_reads(indices, count)
    with pass_loss(loss_function, Pass(sequences, [read]), figures) as total:
        if backward:
            total.backward()
    return total, figures


def _rejected(rid, example_id, output, instruction="Capital of France?"):
    return {"id": rid, "example_id": example_id, "instruction": instruction, "input": "",
            "output": output, "source": "bad" if example_id is None else "edit"}


def test_auto_pairs_replaced_answers_and_avoids_the_others():
    rejected = [_rejected(10, 1, "Lyon."), _rejected(11, None, "I like trains.", "Joke?"),
                _rejected(12, 2, "Blue."),        # the same as its example: no preference
                _rejected(13, 99, "Gone.")]       # its example was skipped (too long)
    plan = plan_objective("auto", RECORDS, rejected)
    assert [(e["id"], r["id"]) for e, r in plan.pairs] == [(1, 10)]
    assert [(r["id"], e) for r, e in plan.avoid] == [(11, None)]
    assert plan.unused == 2 and plan.objective == "dpo+kto"


def test_each_objective_uses_what_it_names():
    rejected = [_rejected(10, 1, "Lyon."), _rejected(11, None, "I like trains.", "Joke?")]
    dpo = plan_objective("dpo", RECORDS, rejected)
    assert (len(dpo.pairs), len(dpo.avoid), dpo.unused, dpo.objective) == (1, 0, 1, "dpo")
    kto = plan_objective("kto", RECORDS, rejected)   # a replaced answer is avoided too
    assert [r["id"] for r, _ in kto.avoid] == [10, 11] and kto.avoid[0][1]["id"] == 1
    assert kto.objective == "kto"
    sft = plan_objective("sft", RECORDS, rejected)
    assert (sft.pairs, sft.avoid, sft.unused, sft.objective) == ([], [], 2, "sft")
    assert plan_objective("auto", RECORDS, []).objective == "sft"


def test_an_objective_with_nothing_to_learn_from_is_refused_in_one_sentence():
    with pytest.raises(TrainingError, match=r"--objective dpo needs rejected answers that "
                       r"were replaced.*\(1 rejected answer with no replacement\).*auto or kto"):
        plan_objective("dpo", RECORDS, [_rejected(11, None, "I like trains.", "Joke?")])
    with pytest.raises(TrainingError, match="--objective kto needs rejected answers.*sft or auto"):
        plan_objective("kto", RECORDS, [])


def test_scores_sum_log_probabilities_and_read_the_telltale():
    # Sequence 0: three learned positions; sequence 1: two (example order). Vocabulary of 3.
    logits = torch.tensor([[4.0, 0.0, 0.0],     # seq 0, target 0: first choice (+4)
                           [0.0, 2.0, 0.0],     # seq 0, target 1: first choice (+2)
                           [0.0, 0.0, 1.0],     # seq 0, target 0: loses by 1
                           [0.0, 0.0, 3.0],     # seq 1, target 2: first choice (+3)
                           [0.0, 5.0, 0.0]])    # seq 1, target 0: loses by 5
    out = LearnedLogits(torch.tensor([0, 1, 0, 2, 0]), torch.tensor([0, 0, 0, 1, 1]),
                        tokens=9, logits_made=logits)
    logp = torch.log_softmax(logits, dim=-1)
    sums, worst = span_scores(out, [(0, 0, None), (1, 0, None), (0, 0, 2), (1, 0, 1),
                                    (0, -1, None), (1, -2, None)])
    assert sums.tolist() == pytest.approx(
        [float(logp[0, 0] + logp[1, 1] + logp[2, 0]), float(logp[3, 2] + logp[4, 0]),
         # telltales: sequence 0's first two positions, sequence 1's first
         float(logp[0, 0] + logp[1, 1]), float(logp[3, 2]),
         # from the end: sequence 0's last position, all of sequence 1
         float(logp[2, 0]), float(logp[3, 2] + logp[4, 0])], rel=1e-5)
    assert worst == pytest.approx([-1.0, -5.0, 2.0, 3.0, -1.0, -5.0])


def test_the_telltale_is_the_first_sentence_or_up_to_where_a_replacement_differs(
        builtin_model):
    tokenizer = builtin_model.tokenizer

    def ids(text):
        return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]

    bad = "The capital is Sydney. It has a big harbour."
    count = telltale_tokens(tokenizer, ids(bad), bad, None)
    assert tokenizer.decode(ids(bad)[:count]).strip() == "The capital is Sydney."
    edited = "The capital is Sydney. It has a small harbour."
    count = telltale_tokens(tokenizer, ids(bad), bad, edited)
    # (this tokenizer spells "big" from single letters: the telltale ends at its first)
    assert tokenizer.decode(ids(bad)[:count]) == "The capital is Sydney. It has a b"
    # An answer that stopped too soon: its end token gives it away.
    assert telltale_tokens(tokenizer, ids("Paris"), "Paris", "Paris is the capital.") == \
        len(ids("Paris"))


@pytest.fixture()
def lora_model(trainable_builtin):
    return with_lora(trainable_builtin, "train")


def test_a_fresh_adapter_is_the_reference_so_the_losses_start_at_their_midpoints(lora_model):
    loaded, model, loss_function = lora_model
    rejected = [_rejected(10, 1, "Lyon is the capital."),
                _rejected(11, None, "I like trains.", "Tell me a joke.")]
    plan = plan_objective("auto", RECORDS, rejected)
    items, skipped = encode_items(plan, loaded.tokenizer, "alpaca", 256)
    assert skipped == [] and [item.kind for item in items] == [PAIR, AVOID]
    # Only the final answer and its end token are learned, in both answers of a pair.
    pair = items[0]
    for encoded in (pair.chosen, pair.rejected):
        start = len(encoded.prompt.ids)
        assert all(label == -100 for label in encoded.labels[:start])
        assert encoded.labels[start:] == encoded.input_ids[start:]
    preferences = PreferenceLoss(items, beta=0.1, weight=1.0, batch_size=4)
    prepare_references(loss_function, model, [preferences])
    assert pair.reference_chosen < 0 and pair.reference_rejected < 0
    weighted, figures = loose_loss(preferences, loss_function, [0, 1], 2, backward=True)
    # LoRA's B starts at zero: the adapter is the base, every reward is 0.
    assert figures.preference_loss == pytest.approx((math.log(2) + 0.5) / 2, abs=1e-4)
    assert figures.tokens == sum(len(s.input_ids) for s in (pair.chosen, pair.rejected,
                                                            items[1].rejected))
    assert figures.item_codes[0] == 2.0        # a pair needs a reward margin
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_the_figures_say_which_rejected_answers_are_still_given(lora_model):
    loaded, model, loss_function = lora_model
    plan = plan_objective("auto", RECORDS, [_rejected(10, 1, "Lyon is the capital.")])
    items, _ = encode_items(plan, loaded.tokenizer, "alpaca", 256)
    preferences = PreferenceLoss(items, beta=0.1, weight=1.0, batch_size=4)
    prepare_references(loss_function, model, [preferences])
    model.eval()
    figures = preferences.measure(loss_function)
    assert figures["pairs"] == 1 and figures["rejected"] == 1 and figures["avoid"] == 0
    assert figures["reward_accuracy"] == 0.0 and figures["mean_reward_margin"] == 0.0
    # The random base gives neither answer; the figures match the log-probabilities.
    assert figures["still_given"] == 0 and figures["still_given_ids"] == []
    assert figures["accuracy"] in (0.0, 1.0)
    assert (figures["mean_margin"] > 0) == (figures["accuracy"] == 1.0)


def test_preference_passes_keep_a_training_model_trainable_on_every_cpu_path(cpu_path):
    """The trainer's eval-mode confirmation (`all_met`, `measure`) runs mid-run, without
    grad: on a CPU with AVX512-BF16 that is the pass that would pack a 4-bit weight for good
    (no backward through it). A model loaded for training stays in the plain layout: the next
    step's check passes and its preference gradient is the plain path's."""
    from sftchat.models.cpu_4bit import check_trainable
    from sftchat.models.loader import load_model

    loaded = load_model("builtin", "cpu", quantize=True, for_training=True)
    model = trainer._wrap_with_lora(loaded, TrainingSettings(rank=8, alpha=16), None)
    model.train()
    loss_function = LossFunction(model, loaded.tokenizer.pad_token_id, "cpu")
    plan = plan_objective("auto", RECORDS, [_rejected(10, 1, "Lyon is the capital."),
                                            _rejected(11, None, "No.", "Tell me a joke.")])
    items, _ = encode_items(plan, loaded.tokenizer, "alpaca", 256)
    preferences = PreferenceLoss(items, beta=0.1, weight=1.0, batch_size=4)
    prepare_references(loss_function, model, [preferences])
    model.eval()
    preferences.all_met(loss_function)
    figures = preferences.measure(loss_function)
    model.train()
    check_trainable(model)          # raises if a weight was packed
    _, step = loose_loss(preferences, loss_function, [0, 1], 2, backward=True)
    assert step.preference_loss == pytest.approx((math.log(2) + 0.5) / 2, abs=1e-4)
    assert figures["rejected"] == 2


def test_a_conversation_is_the_prompt_of_both_answers_and_only_the_last_answer_counts(
        builtin_model):
    """A pair from a conversation: both answers follow the example's system prompt and
    earlier turns (an earlier answer the example learns is prompt here); a bad answer with
    no replacement follows its own conversation."""
    from sftchat.prompts import encode_prompt

    tokenizer = builtin_model.tokenizer
    context = [{"instruction": "Hi.", "response": "Hello!", "learn": True}]
    example = {"id": 1, "instruction": "And a color?", "input": "", "output": "Blue.",
               "system": "Be brief.", "context": context}
    rejected = [_rejected(10, 1, "Seven.", "And a color?"),
                {**_rejected(11, None, "No.", "A joke?"), "system": "Be funny.",
                 "context": context}]
    items, _ = encode_items(plan_objective("auto", [example], rejected), tokenizer, "alpaca",
                            256)
    pair, bad = items
    prompt = encode_prompt(tokenizer, "alpaca", "And a color?", "",
                           history=[], system="Be brief.")
    for encoded in (pair.chosen, pair.rejected):
        start = len(encoded.prompt.ids)
        assert encoded.input_ids[:start] == pair.chosen.input_ids[:start]   # the same prompt
        assert len(encoded.prompt.ids) > len(prompt.ids)   # the earlier turn is in it
        assert set(encoded.labels[:start]) == {-100}        # …and not learned
    assert tokenizer.decode(pair.rejected.input_ids[len(pair.rejected.prompt.ids):],
                            skip_special_tokens=True).strip() == "Seven."
    assert "Be funny." in tokenizer.decode(bad.rejected.input_ids)


def test_a_pair_riding_in_its_examples_pass_reads_the_chosen_answer_from_that_forward(
        lora_model):
    """The training loop shares the curated example's forward with DPO: the pair's loss
    and met figure read off it equal those of a forward of the pair alone, for an example
    whose earlier turn is learned too (only the final answer is the chosen one)."""
    from sftchat.prompts import encode_example
    from sftchat.training.terms import CuratedAnswers, Read

    loaded, model, loss_function = lora_model
    context = [{"instruction": "Hi.", "response": "Hello there!", "learn": True}]
    example = {"id": 1, "instruction": "And a color?", "input": "", "output": "Blue.",
               "context": context}
    items, _ = encode_items(plan_objective("auto", [example], [
        _rejected(10, 1, "Seven is a number.", "And a color?")]), loaded.tokenizer, "alpaca",
        256)
    curated = encode_example(loaded.tokenizer, "alpaca", example, 256)
    preferences = PreferenceLoss(items, beta=0.1, weight=1.0, batch_size=4)
    preferences.ride_with([curated], [1])
    assert preferences.riding == {0: [0]} and preferences.loose == []
    prepare_references(loss_function, model, [preferences])
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    riding = StepFigures([0], [0])
    step_pass = Pass([curated, items[0].rejected],
                     [Read(CuratedAnswers(), [0], curated.num_learned),
                      Read(preferences, [(0, 0, 1)], 1)])
    with torch.no_grad(), pass_loss(loss_function, step_pass, riding):
        pass
    with torch.no_grad():
        _, alone = loose_loss(preferences, loss_function, [0], 1)
    assert riding.preference_loss == pytest.approx(alone.preference_loss, rel=1e-5)
    assert riding.preference_loss != pytest.approx(math.log(2), abs=1e-4)  # it moved
    assert riding.item_codes == alone.item_codes
    assert riding.loss > 0 and riding.example_codes[0] in (1.0, 2.0)
