"""The status line: what is answering (model, quantization, device, adapter), the dataset
size, the training state, an export's progress (while one runs), the session's sampling and
system prompt and, on a GPU, its memory in use and total — always current, and fitted to the
terminal's width.

The model is named short (`model_label`): a GGUF file's stem, a folder's name, a hub id's
part after the "/". When the full line does not fit, the labels get shorter, then the least
needed items go, then the model's name is cut: the active adapter's name is never cut off.
"""

from __future__ import annotations

from pathlib import PurePath

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from sftchat.text import strip_control

# The model's name is never cut shorter than this, the adapter's never at all.
MIN_MODEL_NAME = 8
# The optional items, the first given up first when the line is too narrow for them all.
DROP_ORDER = ("training", "examples", "export", "gpu", "system", "sampling")
# An export's progress is cut to this many characters.
EXPORT_WIDTH = 40


def short_model_name(spec: str, gguf_path: str | None = None) -> str:
    """What the status line calls a model: "builtin", a GGUF file's stem (the file the
    model was converted from when known), a local folder's name, a hub id's part after "/"."""
    if gguf_path:
        return PurePath(gguf_path).stem
    name = PurePath(spec.rstrip("/\\") or spec).name or spec
    return name[:-len(".gguf")] if name.lower().endswith(".gguf") else name


def model_label(loaded) -> str:
    """"SmolLM2-135M-Instruct.Q4_1 (4-bit NF4, cuda)" for a `LoadedModel`."""
    gguf = (getattr(loaded, "identity", None) or {}).get("gguf") or {}
    quant = "4-bit NF4" if loaded.quantized else loaded.compute_dtype
    return f"{short_model_name(loaded.spec, gguf.get('path'))} ({quant}, {loaded.device})"


def sampling_text(settings) -> str:
    """Generation settings in a few characters: "T0.2 p0.95 512tok"."""
    return (f"T{settings.temperature:g} p{settings.top_p:g} "
            f"{settings.max_new_tokens}tok")


def _cut(name: str, width: int) -> str:
    return name if len(name) <= width else name[: max(1, width - 1)] + "…"


class StatusLine(Static):
    DEFAULT_CSS = "StatusLine { width: 100%; }"

    model = reactive("loading model…")
    adapter: reactive[str | None] = reactive(None)
    examples = reactive(0)
    training = reactive("idle")
    export = reactive("")       # an export's last progress line; empty when none runs
    generating = reactive(False)
    gpu_memory = reactive("")   # e.g. "GPU 12.3/79.6 GiB"; empty on a CPU
    sampling = reactive("")     # e.g. "T0.2 p0.95 512tok" (`sampling_text`)
    system = reactive(False)    # a system prompt is set for the next answers

    def _items(self, compact: bool) -> list[tuple[str, list[tuple[str, str]]]]:
        """(key, [(text, style), ...]) of each item after the model, in the order shown."""
        adapter = self.adapter or ("none" if compact else "none (base)")
        items = [
            ("adapter", [("adapter: ", ""),
                         (adapter, "bold cyan" if self.adapter else "")]),
            ("examples", [(f"{self.examples} examples" if compact
                           else f"dataset: {self.examples} examples", "")]),
            ("training", [("train: " if compact else "training: ", ""),
                          (self.training, "bold magenta" if self.training != "idle" else "")]),
        ]
        if self.export:
            items.append(("export", [("export: ", ""),
                                     (_cut(" ".join(self.export.split()), EXPORT_WIDTH),
                                      "bold magenta")]))
        if self.sampling:
            items.append(("sampling", [(self.sampling, "")]))
        if self.system:
            items.append(("system", [("sys" if compact else "system: on", "bold")]))
        if self.gpu_memory:
            items.append(("gpu", [(self.gpu_memory, "")]))
        return items

    def _line(self, model: str, compact: bool, dropped: tuple[str, ...] = ()) -> Text:
        text = Text()
        text.append(" ● ", style="bold green" if not self.generating else "bold yellow")
        text.append(strip_control(model), style="bold")
        for key, parts in self._items(compact):
            if key in dropped:
                continue
            text.append("  ")
            for part, style in parts:
                # Adapter names come from folder names: shown literally, never as markup.
                text.append(strip_control(part), style=style)
        return text

    def render(self) -> Text:
        width = self.size.width
        line = self._line(self.model, compact=False)
        if not width or line.cell_len <= width:
            return line
        dropped: tuple[str, ...] = ()
        line = self._line(self.model, True)
        for key in DROP_ORDER:
            if line.cell_len <= width:
                return line
            dropped += (key,)
            line = self._line(self.model, True, dropped)
        if line.cell_len <= width:
            return line
        # Model and adapter alone are too wide: the model's name gives way (not its
        # quantization and device, nor the adapter).
        name, paren, detail = self.model.rpartition(" (")
        if not paren:
            name, detail = self.model, ""
        room = max(MIN_MODEL_NAME, len(name) - (line.cell_len - width))
        model = _cut(name, room) + (paren + detail if paren else "")
        return self._line(model, True, dropped)
