"""`SFTCHAT_TEST_CPU_PATH` puts a whole test run on one bitsandbytes CPU 4-bit path, every
process it starts included (issue 31: CI's second pass, tests/cpu_paths.py). These check the
mechanism itself in a child process, as the trainer subprocess or the app would see it: the
path it asked for is the one the child's 4-bit layers take, and a torch-free command stays
torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli_helpers import clean_env
from cpu_paths import SESSION_PATH_ENV, SITE

# What a child sees: bitsandbytes' detection, and whether a 4-bit model answering in eval
# mode packed its weights (the packed path) or kept them plain.
PROBE = """
import json, sys
import sftchat.dataset.store   # torch-free: the hook must not import torch
torch_early = "torch" in sys.modules
import torch
from sftchat.models import cpu_4bit
from sftchat.models.loader import load_model
loaded = load_model("builtin", "cpu", quantize=True)
ids = loaded.tokenizer("Hello there", return_tensors="pt").input_ids
with torch.no_grad():
    logits = loaded.model(ids).logits
print(json.dumps({"torch_early": torch_early, "dtype": loaded.compute_dtype,
                  "packed": len(cpu_4bit.packed_layers(loaded.model)),
                  "finite": bool(torch.isfinite(logits).all())}))
"""


def _probe(path: str) -> dict:
    env = clean_env(**{SESSION_PATH_ENV: path, "PYTHONPATH": str(SITE)})
    env.pop("SFTCHAT_CPU_DTYPE", None)
    if path == "packed-emulated":
        env["SFTCHAT_CPU_DTYPE"] = "bfloat16"   # as start_session_path sets it
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.environ.get(SESSION_PATH_ENV) not in (None, "", "native"),
                    reason="checks the mechanism from an unforced run")
def test_a_child_process_takes_the_path_the_run_asked_for(builtin_cache):
    plain = _probe("plain")
    assert plain == {"torch_early": False, "dtype": "float32", "packed": 0, "finite": True}
    # The packed layout emulated (any CPU): weights pack at the first eval pass, bf16 compute.
    emulated = _probe("packed-emulated")
    assert emulated["torch_early"] is False and emulated["finite"]
    assert emulated["dtype"] == "bfloat16" and emulated["packed"] > 0
