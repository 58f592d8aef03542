"""Every architecture sftchat writes as GGUF computes in llama.cpp what it computes in
transformers: a small random model of each — Llama with grouped-query attention (its q/k rows
permuted), Llama 3.1's rotary scaling (the `rope_freqs` factors), Mistral, Qwen2 (q/k/v biases,
rows not permuted) — written by `gguf_files.write_model_gguf`, loaded by llama.cpp, gives the
same next-token logits as the transformers model on the same token ids. A wrong permutation,
name or hyperparameter loads fine and answers nonsense; this is where it would show.
Needs llama-cpp-python (skipped, saying so, without it)."""

from __future__ import annotations

import numpy as np
import pytest

from export_runners import needs_llama_cpp

pytestmark = needs_llama_cpp

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
CASES = {"llama": ("LlamaConfig", {}),
         "llama-3.1-rope": ("LlamaConfig", {"rope_parameters": LLAMA3_ROPE}),
         "mistral": ("MistralConfig", {}),
         "qwen2": ("Qwen2Config", {})}


def _random_model(kind: str, tokenizer):
    import torch
    import transformers

    config_class, extra = CASES[kind]
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=False, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # Wide enough weights that the logits differ; biases that are not zero.
            parameter.normal_(0.0, 0.5 if name.endswith("bias") else 0.08)
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def builtin_tokenizer(builtin_cache):
    """(the built-in model's folder, its tokenizer): a real byte-level BPE tokenizer."""
    from transformers import AutoTokenizer

    from sftchat.models.builtin import ensure_builtin_model

    folder = ensure_builtin_model()
    return folder, AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("kind", list(CASES))
def test_llama_cpp_computes_what_transformers_computes(kind, tmp_path, builtin_tokenizer):
    import torch
    from llama_cpp import Llama

    from sftchat.export.architectures import architecture_for
    from sftchat.export.gguf_files import write_model_gguf
    from sftchat.export.gguf_tokenizer import add_hf_tokenizer

    folder, tokenizer = builtin_tokenizer
    model = _random_model(kind, tokenizer)
    path = tmp_path / f"{kind}.gguf"
    config = model.config
    write_model_gguf(path, model.state_dict(), config, architecture_for(config), kind, "f32",
                     lambda writer: add_hf_tokenizer(writer, folder, tokenizer,
                                                     config.vocab_size, None),
                     lambda message: None)
    ids = tokenizer("The quick brown fox jumps over the lazy dog, then naps in the sun "
                    "for a while before it runs home.")["input_ids"]
    assert len(ids) > 20
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[:len(ids)], dtype=np.float32)
    assert np.abs(want).max() > 1.0           # logits that say something
    assert np.abs(got - want).max() < 2e-3 * np.abs(want).max(), kind
    assert (got.argmax(-1) == want.argmax(-1)).all()
