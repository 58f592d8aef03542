"""The status line: what is answering (model, quantization, device, adapter), the dataset
size, the training state and, on a GPU, its memory in use and total — always current."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static


class StatusLine(Static):
    model = reactive("loading model…")
    adapter: reactive[str | None] = reactive(None)
    examples = reactive(0)
    training = reactive("idle")
    generating = reactive(False)
    gpu_memory = reactive("")   # e.g. "GPU 12.3/79.6 GiB"; empty on a CPU

    def render(self) -> Text:
        text = Text()
        text.append(" ● ", style="bold green" if not self.generating else "bold yellow")
        text.append(self.model, style="bold")
        text.append("  adapter: ")
        text.append(self.adapter or "none (base)", style="bold cyan" if self.adapter else "")
        text.append(f"  dataset: {self.examples} examples")
        text.append("  training: ")
        text.append(self.training, style="bold magenta" if self.training != "idle" else "")
        if self.gpu_memory:
            text.append(f"  {self.gpu_memory}")
        return text
