"""sftchat: chat with a base model, curate its answers, QLoRA-train, hot-swap the adapter.

The package is layered (GUIDE §5): `prompts` owns the template, `models` loads models,
`engine` generates and swaps adapters, `dataset` stores curated examples, `training` runs the
QLoRA trainer, `cli` parses the command line, and `tui` (the only place that imports Textual)
puts it all on screen. Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
