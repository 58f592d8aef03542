"""Small file helpers shared by the model cache (`models.gguf`, `models.identity`) and
training checkpoints (`training.checkpoint`). Imports nothing heavy.

`cached_sha256` is the one hash index: a model file's sha256 is remembered per (path, size,
modification time), so a multi-gigabyte file is read once, not at every start; a changed
file (other size or mtime) is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

# The index's name in the model cache (`<cache>/models/`), beside the files it describes.
HASH_INDEX = "sha256-index.json"


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 4 MiB blocks (model files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_index(index_file: Path) -> dict:
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def write_json_atomic(target: Path, data: dict) -> None:
    """Write `data` as JSON to `target` through a temporary sibling and a rename: a reader
    sees the old file or the new one, never half of one."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def cached_sha256s(paths: Iterable[Path], index_file: Path) -> list[str]:
    """The sha256 of each file of `paths`, from `index_file` where the file is unchanged
    since it was hashed (same resolved path, size and mtime_ns), else read now and added."""
    paths = [Path(path).resolve() for path in paths]
    index = _read_index(index_file)
    hashes, added = [], {}
    for path in paths:
        stat = path.stat()
        seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        known = index.get(str(path))
        if isinstance(known, dict) and all(known.get(k) == v for k, v in seen.items()) \
                and isinstance(known.get("sha256"), str) and len(known["sha256"]) == 64:
            hashes.append(known["sha256"])
            continue
        sha = file_sha256(path)
        hashes.append(sha)
        added[str(path)] = {**seen, "sha256": sha}
    if added:
        # Re-read: another process may have added entries meanwhile. Entries of files that
        # are gone are dropped, so the index stays the size of what the cache describes.
        index = {key: value for key, value in _read_index(index_file).items()
                 if os.path.exists(key)}
        index.update(added)
        try:
            index_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(index_file, index)
        except OSError:
            pass  # a read-only cache: the hashes are right, only the next start re-reads
    return hashes


def cached_sha256(path: Path, index_file: Path) -> str:
    """One file's sha256 through the index (see `cached_sha256s`)."""
    return cached_sha256s([path], index_file)[0]
