"""bitsandbytes' CPU 4-bit paths, for tests that must hold on each (issue 18).

`cpu_path` (a conftest fixture built on `force_cpu_path`) runs a test on every path this machine
can take:

- `plain`: bitsandbytes' AVX512-BF16 detection forced off (what CPUs without it do);
- `packed`: the detection as it is, on a CPU that has the instruction set (skipped elsewhere,
  saying why: the packed kernel executes AVX512-BF16 instructions);
- `packed-emulated`, on CPUs without it: the packing switched on and bitsandbytes' packed
  kernel replaced by a reference in PyTorch (the same layout, bf16 arithmetic, and like the
  real one nothing autograd can follow), so the packed path's wiring is checked on every
  machine. A fake only for what this CPU cannot execute.

The detection is read when a `Linear4bit` is made: models loaded inside the test take the path.

A whole test run can be put on one path, every process it starts included, with
`SFTCHAT_TEST_CPU_PATH` (`session_path`): `plain`, `packed` (the real kernel where the CPU has
it, emulated where not), or `other` — the path this CPU does not take by itself. CI runs the
tests that load a 4-bit model a second time with `other` (.ci/run), so a machine with the
instruction set also checks the plain path and one without it the packed layout.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch

PATHS = ("plain", "packed", "packed-emulated")   # the conftest fixture's params
SESSION_PATH_ENV = "SFTCHAT_TEST_CPU_PATH"
SESSION_PATHS = ("native", "plain", "packed", "packed-emulated", "other")
SITE = Path(__file__).resolve().parent / "cpu_path_site"   # its sitecustomize applies the path


def _dequantize_packed(weight, state, dtype=torch.float32):
    """The [N, K] weight held in bitsandbytes' CPU-packed layout (its
    `_convert_weight_packed_for_cpu`: 32-row blocks, low nibbles rows 0-15, high 16-31;
    absmax [K / blocksize, N] in bf16)."""
    rows, half = weight.shape
    packed = weight.view(torch.uint8).reshape(-1, 32)
    codes = torch.cat([packed & 0xF, packed >> 4], dim=-1)
    codes = codes.reshape(rows // 32, half, 32, 2).transpose(1, 2).reshape(rows, half * 2)
    values = state.code.to(dtype)[codes.long()]
    absmax = state.absmax.to(dtype).T
    return (values.view(rows, absmax.shape[1], -1) * absmax[:, :, None]).view(rows, half * 2)


def _emulated_gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    """bitsandbytes' packed CPU kernel, in PyTorch: bf16 inputs and output, and like the C
    kernel (which writes into a fresh tensor) nothing autograd could follow."""
    state = types.SimpleNamespace(code=code, absmax=absmax)
    with torch.no_grad():
        weight = _dequantize_packed(B.reshape(shapeB[0], -1), state, torch.bfloat16)
        return torch.nn.functional.linear(A.to(torch.bfloat16), weight).to(A.dtype)


def force_cpu_path(path: str, monkeypatch):
    """Put bitsandbytes on `path` for the models made from now on (a generator: the fixture
    yields through it, and the emulated kernel is removed afterwards)."""
    import bitsandbytes.nn.modules as bnb_modules
    from bitsandbytes.functional import has_avx512bf16

    native = bool(has_avx512bf16())
    if path == "packed" and not native:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes' packed kernel cannot run here "
                    "(packed-emulated checks the same path with a reference kernel)")
    if path == "packed-emulated" and native:
        pytest.skip("this CPU runs bitsandbytes' real packed kernel (the packed case)")
    if path == "plain":
        monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: False)
    library = None
    if path == "packed-emulated":
        monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
        library = torch.library.Library("bitsandbytes", "FRAGMENT")
        torch.library.register_kernel("bitsandbytes::gemv_4bit", "cpu", _emulated_gemv_4bit,
                                      lib=library)
    yield path
    if library is not None:
        library._destroy()


def cpu_has_packed_kernel() -> bool:
    """Whether this CPU executes bitsandbytes' packed kernel (AVX512-BF16), read from the
    kernel's list of the CPU's flags rather than from bitsandbytes (which a session path
    patches); skips the test where there is no such list."""
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")


def session_path() -> str:
    """The path `SFTCHAT_TEST_CPU_PATH` puts this test run on, resolved for this CPU:
    `native` (nothing forced), `plain`, `packed` (the real kernel) or `packed-emulated`."""
    asked = os.environ.get(SESSION_PATH_ENV, "native") or "native"
    if asked not in SESSION_PATHS:
        raise pytest.UsageError(f"{SESSION_PATH_ENV}={asked!r}: use one of "
                                f"{', '.join(SESSION_PATHS)}")
    native = cpu_has_packed_kernel()
    if asked == "other":
        asked = "plain" if native else "packed"
    if asked == "packed" and not native:
        return "packed-emulated"
    if asked == "plain" and not native:
        return "native"   # what this CPU does anyway
    return asked


def start_session_path() -> str:
    """Apply `session_path()` to this process and every process it starts: the sitecustomize
    in `SITE` goes on PYTHONPATH (and patches bitsandbytes when it is imported). Returns the
    path, for the run's header."""
    path = session_path()
    if path == "native":
        return path
    os.environ[SESSION_PATH_ENV] = path
    if path == "packed-emulated":
        # A CPU with the packed kernel computes in bfloat16 (models.loader.compute_dtype_for).
        os.environ.setdefault("SFTCHAT_CPU_DTYPE", "bfloat16")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(SITE)] + [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                       if entry and entry != str(SITE)])
    import importlib.util
    import sys

    # This process read PYTHONPATH before the variable was set: run the hook's file here too.
    spec = importlib.util.spec_from_file_location("sftchat_test_cpu_path_site",
                                                  SITE / "sitecustomize.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    for name in ("bitsandbytes.functional", "bitsandbytes.nn.modules"):
        if name in sys.modules:                # imported before the hook: patch it now
            patch_after_import(sys.modules[name])
    return path


def patch_after_import(module) -> None:
    """Put a freshly imported bitsandbytes module on the session's path (called by the
    sitecustomize hook): the detection answers for the path; the emulated path's layers pack
    and its packed kernel is the reference above."""
    path = os.environ.get(SESSION_PATH_ENV)
    if module.__name__ == "bitsandbytes.functional":
        # plain: nothing packs, float32 compute; emulated: this CPU cannot run the C kernel,
        # so bitsandbytes must not register it (its backends read this at import).
        if path in ("plain", "packed-emulated"):
            module.has_avx512bf16 = lambda: False
    elif module.__name__ == "bitsandbytes.nn.modules" and path == "packed-emulated":
        module.has_avx512bf16 = lambda: True   # layers pack at their first eval pass
        global _SESSION_LIBRARY
        _SESSION_LIBRARY = torch.library.Library("bitsandbytes", "FRAGMENT")
        torch.library.register_kernel("bitsandbytes::gemv_4bit", "cpu", _emulated_gemv_4bit,
                                      lib=_SESSION_LIBRARY)


_SESSION_LIBRARY = None   # keeps the emulated kernel registered for the process's life
