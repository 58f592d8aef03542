"""The published adapters of a workspace: `WORKSPACE/adapters/NAME/`, listed, resolved, removed.

An adapter folder holds the standard PEFT files (`adapter_config.json`,
`adapter_model.safetensors`), `sftchat.json` (base model identity, template,
hyperparameters, metrics, dataset snapshot hash and example ids, timestamps) and
`train.jsonl` (the exact snapshot it was trained on).

Publication is atomic: the trainer writes into a hidden staging folder
(`.staging-NAME-PID`) and renames it into place, so a folder that is visible here is always
complete. Removal renames the folder aside before deleting it, for the same reason.
Names are checked so that no path built from one can leave the adapters folder.

This module imports nothing heavy: `sftchat adapters ...` answers at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sftchat.errors import SftchatError
from sftchat.models.identity import base_mismatch

META_FILE = "sftchat.json"
SNAPSHOT_FILE = "train.jsonl"
REJECTED_FILE = "rejected.jsonl"   # the rejected answers a run learned from (if any)
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED = ("latest", "none")


class AdapterError(SftchatError):
    """An adapter cannot be found, named, loaded or removed (message says why and what to do)."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    meta: dict

    @property
    def created_at(self) -> str:
        stamp = self.meta.get("finished_at") or self.meta.get("created_at") or ""
        return stamp if isinstance(stamp, str) else ""

    def summary(self) -> dict:
        """The fields `adapters list` shows, flat and JSON-ready."""
        meta = self.meta
        metrics = meta.get("metrics") or {}
        return {
            "name": self.name,
            "created": self.created_at,
            "base_model": (meta.get("base_model") or {}).get("model"),
            "examples": len((meta.get("dataset") or {}).get("example_ids") or []),
            "steps": metrics.get("steps"),
            "final_loss": metrics.get("final_loss"),
            "template": meta.get("template"),
            "replay": metrics.get("replay"),
            "drift": metrics.get("drift"),
            "path": str(self.path),
        }


def check_name(name: str) -> str:
    """Accept only plain names: no separators, no '..', no leading dot, not reserved."""
    if not NAME_PATTERN.fullmatch(name or "") or ".." in name:
        raise AdapterError(
            f"invalid adapter name {name!r}: use up to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() in RESERVED:
        raise AdapterError(f"{name!r} is reserved (it means something to --adapter); pick another")
    return name


def read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        meta, problem = None, str(exc)
    else:
        problem = "not a JSON object"
    if not isinstance(meta, dict):
        raise AdapterError(
            f"adapter {folder.name!r} has a corrupted {META_FILE} ({problem}); "
            f"remove it with `sftchat adapters rm {folder.name}`"
        )
    return meta


def list_adapters(adapters_dir: Path) -> list[AdapterInfo]:
    """Published adapters, oldest first. Hidden (staging, trash) folders are skipped."""
    if not adapters_dir.is_dir():
        return []
    found = []
    for folder in adapters_dir.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        if not (folder / "adapter_config.json").is_file():
            continue
        try:
            meta = read_meta(folder)
        except AdapterError:
            meta = {"corrupted": True}
        found.append(AdapterInfo(folder.name, folder, meta))
    found.sort(key=lambda info: (info.created_at, info.name))
    return found


def resolve(adapters_dir: Path, name: str | None) -> AdapterInfo | None:
    """`None`/"none" -> None (the base model); "latest" -> the newest; else that name."""
    if name is None or name == "none":
        return None
    available = list_adapters(adapters_dir)
    if name == "latest":
        if not available:
            raise AdapterError(
                f"no adapters in {adapters_dir} yet; train one with `sftchat train`"
            )
        return available[-1]
    check_name(name)
    for info in available:
        if info.name == name:
            return info
    names = ", ".join(info.name for info in available) or "none yet"
    raise AdapterError(f"no adapter named {name!r} (available: {names})")


def check_base(info: AdapterInfo, identity: dict) -> None:
    """An adapter only ever loads onto the base model it was trained on (GUIDE §4): compare
    its recorded base with the loaded model's `identity` — its content, and its revision
    for a hub model (`models.identity.base_mismatch`)."""
    expected = info.meta.get("base_model") or {}
    mismatch = base_mismatch(expected, identity)
    if mismatch is None:
        return
    kind, why = mismatch
    model = expected.get("model")
    remedy = {
        "model": f"start sftchat with --model {model} to use it",
        "revision": "load that revision (its snapshot folder in the Hugging Face cache, "
                    f".../snapshots/{expected.get('revision')}, works as --model) or "
                    "retrain the adapter on this one",
        "content": "load the model files it was trained on, or retrain the adapter on "
                   "this model",
    }[kind]
    raise AdapterError(f"adapter {info.name!r} {why}; {remedy}")


def remove(adapters_dir: Path, name: str) -> None:
    info = resolve(adapters_dir, check_name(name))
    assert info is not None
    trash = adapters_dir / f"{TRASH_PREFIX}{name}-{os.getpid()}"
    os.rename(info.path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(adapters_dir: Path) -> list[str]:
    """Delete staging and trash folders whose owning process is gone (an interrupted run)."""
    removed = []
    if not adapters_dir.is_dir():
        return removed
    for folder in adapters_dir.iterdir():
        if not folder.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
            continue
        pid_text = folder.name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def staging_dir(adapters_dir: Path, name: str) -> Path:
    return adapters_dir / f"{STAGING_PREFIX}{name}-{os.getpid()}"


def check_free(adapters_dir: Path, name: str) -> Path:
    """`adapters/NAME`, which must not exist yet."""
    target = adapters_dir / check_name(name)
    if target.exists():
        raise AdapterError(
            f"an adapter named {name!r} already exists; pick another --name or "
            f"remove it with `sftchat adapters rm {name}`"
        )
    return target


def publish(staging: Path, adapters_dir: Path, name: str) -> Path:
    """Atomically move a complete staging folder to `adapters/NAME`."""
    target = check_free(adapters_dir, name)
    os.rename(staging, target)
    # Make the rename itself durable.
    fd = os.open(adapters_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target
