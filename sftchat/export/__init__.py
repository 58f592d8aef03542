"""Exports: an adapter leaves sftchat as a merged HF folder, GGUF files or an Ollama folder.

This module names what an export can be (the formats, with what each is; the GGUF tensor
types; the bases a LoRA GGUF runs on) and imports nothing: the command line and the app read
it without loading the exporter. The work is in `exporter` and the modules it calls.
"""

# The formats, in the order the app offers them, with what each one is (one line each).
FORMATS = {
    "gguf": "the merged model as one GGUF file (llama.cpp, LM Studio)",
    "gguf-lora": "a llama.cpp LoRA GGUF, to run on top of its base model's GGUF",
    "merged": "a Hugging Face folder: base and LoRA merged (transformers, vLLM)",
    "ollama": "base GGUF + LoRA GGUF + Modelfile, for `ollama create`",
}
OUTTYPES = ("f16", "q8_0", "f32")    # tensor types of the GGUF model files written
BASES = ("as-trained", "original")   # the GGUF a LoRA GGUF runs on (see `exporter`)
