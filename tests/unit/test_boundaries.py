"""Architecture boundaries: the core never loads Textual; quick commands never load torch."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = ["sftchat.engine", "sftchat.dataset.store", "sftchat.dataset.formats",
                "sftchat.training.trainer", "sftchat.training.events", "sftchat.prompts",
                "sftchat.models.loader", "sftchat.models.builtin", "sftchat.config",
                "sftchat.adapters", "sftchat.cli", "sftchat.commands"]


def _loaded_after_import(modules: list[str], probes: list[str]) -> dict[str, bool]:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print(' '.join(str(p in sys.modules) for p in {probes!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return dict(zip(probes, (value == "True" for value in out)))


def test_core_layers_do_not_import_textual():
    loaded = _loaded_after_import(CORE_MODULES, ["textual", "sftchat.engine"])
    assert loaded["sftchat.engine"], "the probe must really import the core"
    assert not loaded["textual"]


def test_cli_and_data_layers_do_not_import_torch():
    light = ["sftchat.cli", "sftchat.commands", "sftchat.dataset.store",
             "sftchat.dataset.formats", "sftchat.adapters", "sftchat.config",
             "sftchat.prompts", "sftchat.training.events"]
    loaded = _loaded_after_import(light, ["torch", "transformers", "sftchat.cli"])
    assert loaded["sftchat.cli"]
    assert not loaded["torch"] and not loaded["transformers"]


def test_no_module_outside_tui_mentions_textual():
    from pathlib import Path

    import sftchat

    root = Path(sftchat.__file__).parent
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py")
                 if "tui" not in path.relative_to(root).parts
                 and ("import textual" in path.read_text() or "from textual" in path.read_text())]
    assert offenders == []
