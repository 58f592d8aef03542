"""Exports: an adapter leaves sftchat as a merged HF folder, GGUF files or an Ollama folder."""
