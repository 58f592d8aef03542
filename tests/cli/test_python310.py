"""Python 3.10 is promised (pyproject: requires-python >= 3.10): the torch-free commands run
on it. `config.py` once imported `tomllib` (3.11+) and every command died on 3.10.

Runs where a Python 3.10 with `tomli` is installed (`.ci/run` installs tomli into the
machine's 3.10); skipped, saying so, where there is none. The model-loading commands need
PyTorch for 3.10 as well, which this offline machine does not have.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_helpers import sftchat as run_sftchat

ROOT = Path(__file__).resolve().parents[2]


def _python310() -> str | None:
    candidates = [shutil.which("python3.10"), *sorted(glob.glob(
        os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import tomli"], capture_output=True)
        if probe.returncode == 0:
            return candidate
    return None


PYTHON310 = _python310()


@pytest.mark.skipif(PYTHON310 is None, reason="no Python 3.10 with tomli on this machine")
def test_the_torch_free_commands_run_on_python_310(tmp_path):
    (tmp_path / "sftchat.toml").write_text('template = "auto"\n[training]\nepochs = "auto"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def sftchat(*args):
        return run_sftchat(tmp_path, *args, python=PYTHON310, env=env, timeout=60)

    added = sftchat("data", "add", "--instruction", "Hi?", "--response", "Hello.")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "1"
    listed = sftchat("data", "list")
    assert listed.returncode == 0 and "Hello." in listed.stdout
    assert sftchat("adapters", "list").returncode == 0
    exported = sftchat("data", "export", str(tmp_path / "out.jsonl"))
    assert exported.returncode == 0 and (tmp_path / "out.jsonl").read_text().count("\n") == 1
