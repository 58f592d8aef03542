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
"""

from __future__ import annotations

import types

import pytest
import torch

PATHS = ("plain", "packed", "packed-emulated")   # the conftest fixture's params


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
