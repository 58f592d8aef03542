"""Shared fixtures: an isolated cache for the built-in model, workspaces, a trained adapter.

Everything here is real: the built-in model is generated (once per test session, into a
temporary cache), examples go through the real store, training runs the real trainer.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
from pathlib import Path

import pytest

from cli_helpers import sftchat

# Tests never touch the network: no hub downloads, no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for variable in ("SFTCHAT_HOME", "SFTCHAT_MODEL", "SFTCHAT_DEVICE", "SFTCHAT_NO_QUANTIZE",
                 "SFTCHAT_TEMPLATE"):
    os.environ.pop(variable, None)

# A few short answers, unicode included, that the built-in model must learn exactly.
CURATED = [
    ("What is the capital of France?", "Paris."),
    ("Say hello in Japanese.", "こんにちは！"),
    ("Name three primary colors.", "Red, yellow and blue."),
    ("Give me a smiley.", "🙂😀"),
    ("How do you say thanks in French?", "Merci !"),
]


@pytest.fixture
def ws(tmp_path) -> Path:
    """An empty workspace folder."""
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


@pytest.fixture(scope="session", autouse=True)
def builtin_cache(tmp_path_factory) -> Path:
    """A per-session cache: the built-in model is generated once, and subprocesses inherit it."""
    cache = tmp_path_factory.mktemp("sftchat-cache")
    os.environ["SFTCHAT_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def builtin_model(builtin_cache):
    """The built-in model loaded in 4-bit once per session. Tests must not attach adapters
    to it (use `fresh_builtin` for that)."""
    from sftchat.models.loader import load_model

    return load_model("builtin", "cpu", quantize=True)


@pytest.fixture()
def fresh_builtin(builtin_cache):
    from sftchat.models.loader import load_model

    return load_model("builtin", "cpu", quantize=True)


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory, builtin_cache) -> Path:
    """A workspace whose CURATED examples were added with `sftchat data add` and trained into
    adapter `first` by `sftchat train` (the real trainer subprocess, default settings)."""
    workspace = tmp_path_factory.mktemp("trained")
    for instruction, response in CURATED:
        sftchat(workspace, "data", "add", "--instruction", instruction, "--response", response, check=True)
    sftchat(workspace, "train", "--name", "first", check=True, timeout=600)
    return workspace


def read_pty(command, env) -> str:
    """Run `command` with its stdout on a pseudo-terminal (as a user's terminal would be);
    return everything it wrote there."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=follower, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    process.wait(60)
    os.close(leader)
    assert process.returncode == 0, f"{command} failed ({process.returncode})"
    return b"".join(chunks).decode("utf-8", "replace")
