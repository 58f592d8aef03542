"""Security: untrusted output, no code execution on load, no network (issue 6, item 4)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from cli_helpers import clean_env, cli_command, sftchat
from conftest import read_pty
from sftchat.models.loader import ModelLoadError, load_model

ESCAPES = "\x1b[31mred\x1b[0m \x1b]0;pwned\x07alert"


def _builtin_copy(tmp_path):
    from sftchat.models.builtin import ensure_builtin_model

    folder = tmp_path / "model"
    shutil.copytree(ensure_builtin_model(), folder)
    return folder


def test_remote_code_is_not_run_unless_the_user_opts_in(tmp_path, builtin_cache):
    folder = _builtin_copy(tmp_path)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig",
                                               "AutoModelForCausalLM": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError):
        load_model(str(folder), "cpu")
    assert not marker.exists()


def test_pickle_weights_are_refused(tmp_path, builtin_cache):
    import torch
    from safetensors.torch import load_file

    folder = _builtin_copy(tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(folder), "cpu")


def test_ask_never_writes_escape_sequences_to_a_terminal(ws):
    sftchat(ws, "data", "add", "--instruction", "Alert me.", "--response", ESCAPES, check=True, in_process=True)
    sftchat(ws, "train", check=True, timeout=600, in_process=True)
    ask = ("ask", "Alert me.", "--adapter", "latest", "--temperature", "0")
    # Piped, the answer is data and comes out exactly as generated ...
    assert sftchat(ws, *ask, check=True, in_process=True).stdout == ESCAPES + "\n"
    # ... but on a terminal the control sequences are stripped.
    shown = read_pty(cli_command(ws, *ask), clean_env())
    assert "red" in shown and "alert" in shown
    assert "\x1b" not in shown and "\x07" not in shown and "pwned" not in shown


def test_the_builtin_loop_makes_no_network_connection(ws, tmp_path):
    """With the hub's offline switches removed, `ask` on the built-in model opens no socket."""
    hook = tmp_path / "hook"
    hook.mkdir()
    marker = tmp_path / "connected"
    (hook / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(self, *args, **kwargs):\n"
        f"    open({str(marker)!r}, 'a').write(repr(args) + '\\n')\n"
        "    raise OSError('network disabled by test')\n"
        "socket.socket.connect = _refuse\n"
        "socket.socket.connect_ex = _refuse\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")}
    env["PYTHONPATH"] = str(hook) + os.pathsep + env.get("PYTHONPATH", "")
    result = sftchat(ws, "ask", "Hello?", "--max-new-tokens", "3", env=env)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), marker.read_text()
