"""Architecture boundaries: the core never loads Textual; quick commands never load torch."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = ["sftchat.engine", "sftchat.dataset.store", "sftchat.dataset.formats",
                "sftchat.training.trainer", "sftchat.training.events", "sftchat.prompts",
                "sftchat.models.loader", "sftchat.models.builtin", "sftchat.config",
                "sftchat.adapters.registry", "sftchat.adapters.comparison", "sftchat.cli",
                "sftchat.commands", "sftchat.tui.trainer_process"]


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
             "sftchat.dataset.formats", "sftchat.adapters.registry", "sftchat.adapters.lineage",
             "sftchat.config",
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


def _imports(path) -> set[str]:
    """Every module a source file imports, at any depth (lazy imports inside functions too),
    read statically from its syntax tree."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _package_modules():
    from pathlib import Path

    import sftchat

    root = Path(sftchat.__file__).parent
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        yield ".".join(p for p in parts if p != "__init__"), path


def _uses(imports: set[str], module: str) -> bool:
    return any(name == module or name.startswith(module + ".") for name in imports)


def test_import_contracts_hold_statically():
    """Issue 11, item 7: no import circles through the CLI or the interface. The core never
    imports `sftchat.tui` or `sftchat.cli`/`commands`; the interface never imports the CLI;
    only `cli` and `commands` import each other's layer."""
    broken = []
    for module, path in _package_modules():
        imports = _imports(path)
        in_tui = module.startswith("sftchat.tui")
        in_cli = module in ("sftchat.cli", "sftchat.commands")
        if not in_tui and not in_cli and _uses(imports, "sftchat.tui"):
            broken.append(f"{module} imports sftchat.tui")
        if not in_cli and (_uses(imports, "sftchat.cli") or _uses(imports, "sftchat.commands")):
            broken.append(f"{module} imports the command line")
        if not in_tui and _uses(imports, "textual"):
            broken.append(f"{module} imports textual")
    assert broken == []
    # The check reads real imports: the chat screen does import the core.
    chat = dict(_package_modules())["sftchat.tui.screens.chat_models"]
    assert _uses(_imports(chat), "sftchat.training.options")


def test_test_modules_have_unique_names():
    # pytest imports test files by basename (rootdir mode, no packages): a second
    # `test_x.py` in another folder is not collected at all, it errors.
    from collections import Counter
    from pathlib import Path

    names = Counter(path.name for path in Path(__file__).resolve().parents[1].rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []


def _module_graph() -> dict[str, set[str]]:
    """sftchat module -> the sftchat modules it imports (lazy imports included)."""
    modules = dict(_package_modules())
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(path):
            # `from sftchat.x import y` names y, which is a module or an attribute of x.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and name != "sftchat":
                targets.add(name)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once, as the modules along it."""
    found, seen = [], set()

    def walk(node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in path:
                cycle = path[path.index(target):]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
            elif len(path) < 12:
                walk(target, path + [target])

    for start in sorted(graph):
        walk(start, [start])
    return found


def test_no_import_circles():
    """Issue 20, item 8: no module imports one that imports it back, even lazily (a lazy
    import inside a function is how a circle hides: both modules work until one changes)."""
    assert _cycles(_module_graph()) == []
    # The check finds a circle where there is one.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
