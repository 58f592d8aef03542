"""Puts every Python process of a test run on one bitsandbytes CPU 4-bit path (issue 31).

The tests' pytest process and every process it starts (the trainer subprocess, the app in a
pseudo-terminal, `sftchat ask`) see this folder on PYTHONPATH when `SFTCHAT_TEST_CPU_PATH`
asks for a path (tests/conftest.py puts it there), so Python runs this file at start-up. It
imports nothing heavy: the torch-free commands must stay torch-free. It waits for
bitsandbytes' `functional` and `nn.modules` to be imported and then patches them
(tests/cpu_paths.py: `patch_after_import`), before any 4-bit layer exists.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

_TARGETS = ("bitsandbytes.functional", "bitsandbytes.nn.modules")


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes' modules with the other finders and runs the patch right after
    each one executes."""

    def find_spec(self, name, path, target=None):
        if name not in _TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module

        def execute_then_patch(module):
            execute(module)
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            from cpu_paths import patch_after_import

            patch_after_import(module)

        spec.loader.exec_module = execute_then_patch
        return spec


if os.environ.get("SFTCHAT_TEST_CPU_PATH", "native") != "native":
    sys.meta_path.insert(0, _PatchAfterImport())
