"""Running exports where their users run them: a merged folder in plain transformers
(`transformers_answers`), GGUF files in llama.cpp itself (llama-cpp-python, `load_llama_cpp`).

llama.cpp:
The prompt is rendered with the GGUF file's own chat template by llama-cpp-python's own
formatter (what `create_chat_completion` uses) and tokenized by llama.cpp, so the file's
tokenizer metadata and chat template are under test too, not only its weights; then greedy
decoding until an end-of-generation token.

llama-cpp-python 0.3.36 is on PyPI as a source distribution only: `pip install
llama-cpp-python==0.3.36` builds llama.cpp here with cmake and gcc (6-14 minutes on 2 cores;
pip caches the wheel). `.ci/run` installs it; elsewhere these tests skip, saying so.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import pytest

LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
SKIP_REASON = ("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36 "
               "(builds llama.cpp from source, ~10 minutes; .ci/run installs it)")
needs_llama_cpp = pytest.mark.skipif(not LLAMA_CPP, reason=SKIP_REASON)


@dataclass
class LlamaCppModel:
    llm: object
    template: str
    stop_ids: set[int]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(self.template, eos_token=self._text(self.llm.token_eos()),
                                        bos_token=self._text(self.llm.token_bos()))
        prompt = formatter(messages=messages).prompt
        # llama.cpp adds the BOS when the file says so, unless the template wrote it.
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def _text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")

    def answer(self, question: str, max_new_tokens: int = 48) -> str:
        return self.answer_messages([{"role": "user", "content": question}], max_new_tokens)

    def answer_messages(self, messages: list[dict], max_new_tokens: int = 48) -> str:
        out: list[int] = []
        for token in self.llm.generate(self.prompt_ids(messages), temp=0.0, top_k=1,
                                       reset=True):
            if token in self.stop_ids or len(out) >= max_new_tokens:
                break
            out.append(token)
        return self.llm.detokenize(out).decode("utf-8", "replace")


def load_llama_cpp(model_path, lora_path=None, stop_ids=()) -> LlamaCppModel:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), lora_path=str(lora_path) if lora_path else None,
                n_ctx=1024, n_threads=2, seed=0, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    return LlamaCppModel(llm, template, {llm.token_eos(), *stop_ids})


def transformers_answers(folder, questions: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers of the Hugging Face folder `folder`, loaded by transformers alone, to
    `questions`, each prompted by the folder's own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    answers = []
    for question in questions:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:],
                                        skip_special_tokens=True))
    return answers
