"""What makes a base model *this* base model: its identity, recorded by every adapter as the
base it was trained on, checked before the adapter loads (`adapters.registry.check_base`, a
resumed run's `training.checkpoint.check_base`), and the key of every cache of the base's
own answers (`training.anchors`).

`fingerprint` (version 2) is a content hash: sha256 over the model's config (minus the fields
that change with the library, not the model), its hub commit when it has one, and the content
hash of each file that decides its answers — the safetensors weights, the tokenizer's files,
the generation config — plus, for a converted GGUF file, that file's hash. Two folders with
one config and weight files of the same sizes but other bytes are two models.

Content hashes cost a start nothing after the first:
- a file that links into the Hugging Face cache's `blobs/` under a sha256 name (every LFS
  file of a hub download: the weights) is known by that name; nothing is read;
- any other file's sha256 comes from the model cache's hash index (`files.cached_sha256`,
  per path, size and mtime_ns), so an 8B model is read once, not at every start.

A hub model's `revision` is its commit: `config._commit_hash` where transformers still sets
it, else the snapshot the cache resolves the id to. A snapshot folder given as a path
(`…/models--org--name/snapshots/COMMIT`) has that revision too, so it is the same model as
the hub id it came from.

Adapters published before version 2 recorded `fingerprint` as the config plus the weight
files' names and sizes, and no `fingerprint_version`. Such an adapter is checked on those
same old fields (`legacy_fingerprint`, which every identity carries) and on the revision when
both sides know one: refusing every adapter made before would cost users more than the
check they were made with; retraining one gives it the content check.

This module imports nothing heavy (`adapters` commands use it).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from sftchat.config import same_model
from sftchat.files import HASH_INDEX, cached_sha256s

FINGERPRINT_VERSION = 2
# Config fields that say which library wrote the file or how it was loaded, not the model.
VOLATILE_CONFIG = ("transformers_version", "_name_or_path", "_commit_hash",
                   "quantization_config", "torch_dtype", "dtype", "use_cache")
# Besides the weights (`*.safetensors`): the files that decide how text becomes tokens and
# when an answer stops.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
                   "merges.txt", "vocab.txt", "spiece.model", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def model_identity(spec: str, path: str, config: Any, gguf=None) -> dict:
    """The identity of the model `spec`, loaded from `path` (a folder, or a hub id) with
    `config`; `gguf` is the `ConvertedGGUF` it came from, if any."""
    config_text = _config_text(config)
    folder, revision = _content_source(path, config)
    digest = hashlib.sha256(b"sftchat-base-v2\0" + config_text)
    if revision:
        digest.update(f"revision:{revision}\n".encode())
    if folder is not None:
        for name, sha in _file_hashes(folder):
            digest.update(f"{name}:{sha}\n".encode())
    identity = {"model": spec, "revision": revision}
    if gguf is not None:
        digest.update(f"gguf:{gguf.sha256}".encode())
        identity["gguf"] = {"path": str(gguf.source), "sha256": gguf.sha256}
    identity["fingerprint"] = digest.hexdigest()
    identity["fingerprint_version"] = FINGERPRINT_VERSION
    identity["legacy_fingerprint"] = _legacy_fingerprint(config_text, path, gguf)
    return identity


def base_mismatch(recorded: dict, identity: dict) -> tuple[str, str] | None:
    """Why the model of `identity` is not the base `recorded` (an adapter's or a run's
    `base_model`): (kind, phrase), kind one of "model", "revision", "content"; None when it
    is that base, or when nothing was recorded to check against."""
    if not recorded.get("fingerprint"):
        return None  # an adapter made elsewhere, with no sftchat record of its base
    was, now = recorded.get("revision"), identity.get("revision")
    if recorded.get("fingerprint_version") == FINGERPRINT_VERSION:
        matches = recorded["fingerprint"] == identity.get("fingerprint")
    else:  # published before content hashes: compare what it recorded (see above)
        matches = recorded["fingerprint"] == identity.get("legacy_fingerprint") \
            and not (was and now and was != now)
    if matches:
        return None
    model, loaded = recorded.get("model"), identity.get("model")
    if not same_model(str(model), str(loaded)):
        return "model", f"was trained on base model {model!r}, not on the loaded {loaded!r}"
    if was and now and was != now:
        return "revision", (f"was trained on {model!r} at revision {was[:12]}, not on the "
                            f"loaded revision {now[:12]}")
    return "content", (f"was trained on another {model!r}: the loaded model's weights, "
                       "tokenizer or config are not the ones it was trained on")


def _config_text(config: Any) -> bytes:
    config_dict = config.to_dict()
    for volatile in VOLATILE_CONFIG:
        config_dict.pop(volatile, None)
    return json.dumps(config_dict, sort_keys=True, default=str).encode()


def _content_source(path: str, config: Any) -> tuple[Path | None, str | None]:
    """(the folder holding the model's files, its hub commit), either None when unknown."""
    folder = Path(path)
    if folder.is_dir():
        in_hub_cache = folder.parent.name == "snapshots" \
            and folder.parent.parent.name.startswith("models--")
        return folder, folder.name if in_hub_cache else None
    commit = getattr(config, "_commit_hash", None)
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, "config.json", revision=commit)
    except Exception:  # noqa: BLE001 - an id the cache cannot place: no files to hash
        found = None
    if isinstance(found, str):
        snapshot = Path(found).parent
        return snapshot, snapshot.name
    return None, commit


def _content_files(folder: Path) -> list[Path]:
    names = {path.name for path in folder.glob("*.safetensors")}
    names.update(name for name in TOKENIZER_FILES if (folder / name).is_file())
    return [folder / name for name in sorted(names)]


def _file_hashes(folder: Path) -> list[tuple[str, str]]:
    """(name, sha256) of each content file: a hub blob's own name where it is a sha256,
    else from the hash index (read once per file version)."""
    from sftchat.models.builtin import default_cache_dir

    known, unknown = {}, []
    for path in _content_files(folder):
        blob = path.resolve()
        if path.is_symlink() and blob.parent.name == "blobs" \
                and _SHA256_NAME.fullmatch(blob.name):
            known[path.name] = blob.name
        else:
            unknown.append(path)
    index = default_cache_dir() / "models" / HASH_INDEX
    known.update(zip((path.name for path in unknown), cached_sha256s(unknown, index)))
    return sorted(known.items())


def _legacy_fingerprint(config_text: bytes, path: str, gguf) -> str:
    """The fingerprint adapters recorded before version 2: config, weight names and sizes."""
    digest = hashlib.sha256(config_text)
    folder = Path(path)
    if folder.is_dir():
        for weight in sorted(folder.glob("*.safetensors")):
            digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    if gguf is not None:
        digest.update(f"gguf:{gguf.sha256}".encode())
    return digest.hexdigest()
