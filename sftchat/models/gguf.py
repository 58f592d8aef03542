"""GGUF models (the files Ollama, LM Studio and llama.cpp use), converted once and cached.

`--model` may name a `.gguf` file, or a folder that holds one (and no `config.json`).
transformers reads GGUF through the `gguf` package, but slowly: the tokenizer is rebuilt from
the file's vocabulary and every tensor is de-quantized (about 40 s for a 135M model on a
2-core CPU). So the first start converts the file into a plain Hugging Face folder under the
user's cache (`$SFTCHAT_CACHE/models/gguf-<sha256 prefix>/`), and every later start loads
that folder like any other model — 4-bit NF4 included.

The cached folder is keyed by the file's *content* hash, so the same file under two paths is
converted once. Hashing a multi-gigabyte file on every start would cost seconds, so the model
cache's hash index (`files.cached_sha256`, shared with `models.identity`) remembers the hash
of each (path, size, modification time); a changed file is hashed (and converted) again.
The hash is what an adapter records as its base (`gguf_sha256`).

This module imports nothing heavy at import time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sftchat.errors import SftchatError
from sftchat.files import HASH_INDEX, cached_sha256, write_json_atomic

GGUF_SUFFIX = ".gguf"
INFO_FILE = "sftchat-gguf.json"
# Bump when the conversion writes something different: cached folders are keyed by it.
CONVERSION_VERSION = 1

Progress = Callable[[str], None]


class GGUFError(SftchatError, RuntimeError):
    """A GGUF file cannot be used; the message says which, why and what to do."""


@dataclass(frozen=True)
class ConvertedGGUF:
    source: Path       # the .gguf file
    folder: Path       # the cached Hugging Face folder
    sha256: str        # content hash of the .gguf file
    architecture: str  # the file's `general.architecture`


def find_gguf(spec: str) -> Path | None:
    """The GGUF file `spec` names: a `.gguf` file, or a folder holding exactly one (and no
    config.json, which would make it a Hugging Face folder). None if `spec` is neither."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX:
        if not path.is_file():
            raise GGUFError(f"GGUF file {spec!r} does not exist; check the path")
        return path.resolve()
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX)
        if len(found) == 1:
            return found[0].resolve()
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise GGUFError(f"folder {spec!r} holds several GGUF files ({names}); "
                            "pass --model the one file to use")
    return None


def read_architecture(path: Path) -> str:
    """The file's `general.architecture`, read from its header (cheap: the reader maps the
    file and parses only what is asked for)."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise GGUFError(
            "reading GGUF files needs the `gguf` package: pip install gguf") from exc
    try:
        field = GGUFReader(str(path)).fields.get("general.architecture")
        if field is None:
            raise ValueError("no general.architecture field")
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as exc:  # noqa: BLE001 - a damaged file is one clear sentence
        raise GGUFError(f"{path} is not a readable GGUF file ({exc})") from exc


def supported_architectures() -> set[str]:
    """GGUF architectures this transformers can read (its legacy and its new loader)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = set(GGUF_SUPPORTED_ARCHITECTURES)
    try:
        from transformers.integrations.gguf.utils import GGUF_ARCHS

        supported |= set(GGUF_ARCHS)
    except ImportError:  # older transformers: the legacy loader is all there is
        pass
    return supported


def check_architecture(path: Path) -> str:
    architecture = read_architecture(path)
    supported = supported_architectures()
    if architecture not in supported:
        raise GGUFError(
            f"{path.name} is a {architecture!r} model, which this transformers cannot read "
            f"from GGUF (it reads: {', '.join(sorted(supported))}); use the model's Hugging "
            "Face folder instead, or upgrade transformers"
        )
    return architecture


# --------------------------------------------------------------------------- the cache


def content_hash(path: Path, root: Path) -> str:
    """The file's sha256, from the hash index of the model cache `root` when the file is
    unchanged since it was hashed."""
    return cached_sha256(path, root / HASH_INDEX)


def converted_folder(root: Path, sha: str) -> Path:
    return root / f"gguf-{sha[:16]}-v{CONVERSION_VERSION}"


def _convert(source: Path, target: Path, trust_remote_code: bool) -> None:
    """Read `source` with transformers' GGUF support and save a plain HF folder in `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.name, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), **kwargs)
    # float32 is transformers' fast path for de-quantizing; the copy is saved in bfloat16,
    # which holds every value a 4/5/6/8-bit GGUF block encodes to within its own error,
    # at half the disk space.
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), dtype=torch.float32,
                                                 **kwargs)
    # The weights are plain tensors now: save them as an ordinary checkpoint, not as a
    # "GGUF-quantized" one (which would make every later load go back to the .gguf).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))


def ensure_converted(spec: str, source: Path, cache_dir: Path | None = None,
                     trust_remote_code: bool = False,
                     progress: Progress | None = None) -> ConvertedGGUF:
    """The cached Hugging Face folder for the GGUF file `source`, converting it first if the
    cache lacks it. The conversion writes into a temporary sibling folder and renames it into
    place, so a crash or a concurrent conversion never leaves a half-written model."""
    from sftchat.models.builtin import default_cache_dir

    root = (cache_dir or default_cache_dir()) / "models"
    root.mkdir(parents=True, exist_ok=True)
    architecture = check_architecture(source)
    sha = content_hash(source, root)
    target = converted_folder(root, sha)
    if not (target / INFO_FILE).is_file():
        if progress:
            progress(f"converting {source.name} to a cached model folder (once; this can "
                     "take a minute)…")
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            try:
                _convert(source, staging, trust_remote_code)
            except Exception as exc:  # noqa: BLE001 - one sentence for the user
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise GGUFError(f"cannot convert {spec!r} from GGUF: {first}") from exc
            write_json_atomic(staging / INFO_FILE, {
                "source": str(source), "sha256": sha, "architecture": architecture,
                "conversion_version": CONVERSION_VERSION,
            })
            try:
                os.rename(staging, target)
            except OSError:
                # Another process finished first; its copy is the same conversion.
                if not (target / INFO_FILE).is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ConvertedGGUF(source=source, folder=target, sha256=sha, architecture=architecture)
