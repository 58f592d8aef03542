"""Checkpoints of a training run, so that a killed or cancelled run resumes where it stopped:
where they live, what they hold, how long they stay, and finding and checking one to resume
(`checkpoint_writer` writes them and restores one into the training loop).

A run writes a checkpoint every `checkpoint_every` optimizer steps (the default, "auto": every
2 minutes of training, so a run loses at most that much and a short run writes none), and,
when it already has one, once more when it is cancelled. `sftchat train --resume` (`/train
--resume` in the app) continues the workspace's interrupted run from it: the same name,
settings, base model, and the dataset snapshot the run started with (not the current
dataset, which may have changed: the run says so), and it ends with the adapter the
uninterrupted run would have published — on the same machine, bit for bit
(tests/e2e/test_resume.py): the steps are planned up front from the seed (`schedule`), and
the checkpoint holds everything else a step depends on.

Where: `adapters/.checkpoint-NAME/`, beside the staging folders and the training lock. It is
hidden (`adapters list` does not show it) and is no leftover for `registry.clean_leftovers`,
which only deletes staging and trash folders::

    run.json       the run, written at its first checkpoint: name, run id, base model identity
                   and quantization, template, training settings, LoRA shape, the snapshot's
                   hash and example ids, fingerprints of its tokenization and of its step
                   plan, the base model's anchor answers (the regularizer's and the drift
                   measure's, so a resumed run uses the same ones), the rejected answers
                   it learns from (`preference`), started_at
    train.jsonl    the run's snapshot
    step-000040/   adapter_config.json + adapter_model.safetensors (PEFT), optimizer.pt (AdamW
                   and the learning-rate schedule), rng.pt (torch's generators), state.json
                   (steps done, the loss curve, which examples are learned, tokens, seconds,
                   the anchor cursor, the batch layout, Python's and NumPy's generators)
    latest.json    the complete step folder to resume from, its files' sizes and sha256

Lifetime: removed when its run publishes, or fails in a way a resume would repeat (a
diverging loss, too much drift); kept when the run is cancelled, killed or crashes. A
workspace keeps one interrupted run: a newer run's first checkpoint replaces an older run's
(until then the older one stays resumable).

Resuming refuses, each in one sentence (`CheckpointError`s): nothing to resume; a checkpoint
that is incomplete or damaged (its sizes and checksums are checked before the model loads);
one made on another base model (or quantized otherwise), or whose snapshot no longer
tokenizes or plans as it did. A resumed run's `started` event carries `resumed_from_step`
and `dataset_changed`; its `sftchat.json`, `resumed_at_step`. A run trained by several
processes (`--nproc`) is checkpointed by rank 0 and resumes in one process, on the same
schedule (the data-parallel tests check that one process trains what N do, within float
tolerance).

For the app: `interrupted_run(workspace_or_adapters_dir) -> InterruptedRun | None` says
whether there is a run to offer to resume (name, step, total_steps, saved_at, started_at,
base_model, path; `describe()` for one line). A run that is training right now is not
interrupted. This module imports nothing heavy: the app can call it at startup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from sftchat.adapters import registry as adapter_registry
from sftchat.config import ConfigError, TrainingSettings, same_model, validate_training
from sftchat.files import file_sha256
from sftchat.models.identity import base_mismatch
from sftchat.training.errors import TrainingError
from sftchat.training.workspace_lock import LOCK_FILE

CHECKPOINT_PREFIX = ".checkpoint-"
RUN_FILE = "run.json"
LATEST_FILE = "latest.json"
FORMAT = 1


class CheckpointError(TrainingError):
    """A run cannot be resumed (the message says why and what to do)."""


class NothingToResume(CheckpointError):
    """The workspace has no interrupted run."""


class CheckpointCorrupt(CheckpointError):
    """The interrupted run's checkpoint is incomplete or damaged."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint was made with another base model, tokenizer or schedule."""


@dataclass(frozen=True)
class InterruptedRun:
    """A run that stopped before publishing and can be resumed (`sftchat train --resume`)."""

    name: str
    step: int          # optimizer steps done
    total_steps: int   # planned (early stopping may end it sooner)
    saved_at: str      # when its latest checkpoint was written (ISO 8601, UTC)
    started_at: str
    base_model: str
    path: Path         # its checkpoint folder

    def describe(self) -> str:
        return (f"training run {self.name} stopped at step {self.step}/{self.total_steps} "
                f"(checkpoint of {self.saved_at[:19].replace('T', ' ')} UTC)")


def checkpoint_dir(adapters_dir: Path, name: str) -> Path:
    return adapters_dir / f"{CHECKPOINT_PREFIX}{adapter_registry.check_name(name)}"


def _adapters_dir(where: Path) -> Path:
    where = Path(where)
    if where.name == "adapters" and not (where / "adapters").is_dir():
        return where
    return where / "adapters"


def now_iso() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- durable writes


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, value) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(value, out, ensure_ascii=False)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_path(path.parent)


def remove_folder(folder: Path) -> None:
    """Delete a folder so that no reader ever sees it half-deleted: renamed aside first (a
    kill mid-way leaves a trash folder, which `registry.clean_leftovers` removes)."""
    if not folder.exists():
        return
    trash = folder.with_name(
        f"{adapter_registry.TRASH_PREFIX}{folder.name.lstrip('.')}-{os.getpid()}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- finding runs


def checkpoint_folders(adapters_dir: Path) -> list[Path]:
    if not adapters_dir.is_dir():
        return []
    return [folder for folder in adapters_dir.iterdir()
            if folder.name.startswith(CHECKPOINT_PREFIX) and folder.is_dir()]


def _published_by(adapters_dir: Path, folder: Path) -> bool:
    """Whether the run of checkpoint `folder` has published its adapter (killed between
    publishing and removing its checkpoint)."""
    run = read_json(folder / RUN_FILE) or {}
    name = folder.name[len(CHECKPOINT_PREFIX):]
    meta = read_json(adapters_dir / name / adapter_registry.META_FILE) or {}
    return bool(run.get("run_id")) and meta.get("run_id") == run.get("run_id")


def _training_now(adapters_dir: Path, name: str) -> bool:
    """Whether run `name` is being trained right now (it holds the workspace's training
    lock); read-only, so asking never disturbs a run that is starting."""
    holder = read_json(adapters_dir / LOCK_FILE) or {}
    pid = holder.get("pid")
    return (holder.get("name") == name and isinstance(pid, int) and pid != os.getpid()
            and adapter_registry.pid_alive(pid))


def clean_stale(adapters_dir: Path) -> list[str]:
    """Delete checkpoints no run can resume: of a run that published, or that never finished
    writing its first checkpoint. Called by a run holding the training lock."""
    removed = []
    for folder in checkpoint_folders(adapters_dir):
        if not (folder / LATEST_FILE).exists() or _published_by(adapters_dir, folder):
            remove_folder(folder)
            removed.append(folder.name)
    return removed


def _candidates(adapters_dir: Path, holding_lock: bool = False) -> list[Path]:
    """Checkpoint folders of interrupted runs, the most recent first (`holding_lock`: asked
    by the run that holds the training lock, so none is training now)."""
    found = []
    for folder in checkpoint_folders(adapters_dir):
        latest = folder / LATEST_FILE
        name = folder.name[len(CHECKPOINT_PREFIX):]
        if not latest.exists() or _published_by(adapters_dir, folder) \
                or (not holding_lock and _training_now(adapters_dir, name)):
            continue
        found.append((latest.stat().st_mtime, folder))
    return [folder for _, folder in sorted(found, key=lambda item: item[0], reverse=True)]


def interrupted_run(where: Path) -> InterruptedRun | None:
    """The workspace's interrupted run (the most recent one), or None. `where` is the
    workspace or its adapters folder. A damaged checkpoint is still reported (resuming it
    says what is wrong)."""
    for folder in _candidates(_adapters_dir(Path(where))):
        run = read_json(folder / RUN_FILE) or {}
        latest = read_json(folder / LATEST_FILE) or {}
        return InterruptedRun(
            name=str(run.get("name") or folder.name[len(CHECKPOINT_PREFIX):]),
            step=int(latest.get("step") or 0), total_steps=int(run.get("total_steps") or 0),
            saved_at=str(latest.get("saved_at") or ""),
            started_at=str(run.get("started_at") or ""),
            base_model=str((run.get("base_model") or {}).get("model") or ""), path=folder)
    return None


# --------------------------------------------------------------------------- loading


@dataclass
class Resumable:
    """A checkpoint checked for resuming: its run, its latest step and its snapshot."""

    folder: Path
    run: dict
    latest: dict
    records: list[dict]
    training: TrainingSettings

    @property
    def name(self) -> str:
        return self.run["name"]

    @property
    def step(self) -> int:
        return self.latest["step"]

    @property
    def step_dir(self) -> Path:
        return self.folder / self.latest["folder"]

    @property
    def rejected(self) -> list[dict]:
        """The rejected answers the run learns from (in run.json; none before issue 21)."""
        return self.run.get("rejected") or []

    def describe(self) -> str:
        return (f"resuming {self.name} at step {self.step}/{self.run['total_steps']} from "
                f"its checkpoint of {self.latest['saved_at'][:19].replace('T', ' ')} UTC")


def corrupt_error(folder: Path, problem: str) -> CheckpointCorrupt:
    name = folder.name[len(CHECKPOINT_PREFIX):]
    return CheckpointCorrupt(
        f"the checkpoint of training run {name} is incomplete or damaged ({problem}); it "
        f"cannot be resumed: delete {folder} and start a new run with `sftchat train`")


def load_interrupted(adapters_dir: Path) -> Resumable:
    """The most recent interrupted run's checkpoint, checked by the run that holds the
    training lock (files complete and unchanged, snapshot and settings readable); raises
    `NothingToResume` or `CheckpointCorrupt`. The tensors are read later
    (`checkpoint_writer.Checkpointer.restore`), where an unreadable one is reported the same
    way."""
    from sftchat.dataset.store import snapshot_hash

    candidates = _candidates(adapters_dir, holding_lock=True)
    if not candidates:
        raise NothingToResume(
            f"nothing to resume: {adapters_dir} holds no interrupted training run (a run "
            "keeps a checkpoint once it has trained for a while, see checkpoint_every); "
            "start one with `sftchat train`")
    folder = candidates[0]
    run, latest = read_json(folder / RUN_FILE), read_json(folder / LATEST_FILE)
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        raise corrupt_error(folder, f"{RUN_FILE} is unreadable or of another format")
    if not isinstance(latest, dict) or not isinstance(latest.get("files"), dict):
        raise corrupt_error(folder, f"{LATEST_FILE} is unreadable")
    step_dir = folder / str(latest.get("folder"))
    for file_name, expected in latest["files"].items():   # before minutes of model loading
        path = step_dir / file_name
        where = f"{latest.get('folder')}/{file_name}"
        if not path.is_file() or path.stat().st_size != expected.get("size"):
            raise corrupt_error(folder, f"{where} is missing or truncated")
        if file_sha256(path) != expected.get("sha256"):
            raise corrupt_error(folder, f"{where} does not match its checksum")
    try:
        with open(folder / adapter_registry.SNAPSHOT_FILE, encoding="utf-8") as lines:
            records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise corrupt_error(folder, f"its snapshot is unreadable: {exc}") from None
    if snapshot_hash(records) != run.get("snapshot_sha256"):
        raise corrupt_error(folder, "its snapshot does not match the run's hash")
    known = {spec.name for spec in fields(TrainingSettings)}
    try:
        training = validate_training(TrainingSettings(
            **{k: v for k, v in (run.get("training") or {}).items() if k in known}))
    except (ConfigError, TypeError) as exc:
        raise corrupt_error(folder, f"its training settings: {exc}") from None
    return Resumable(folder, run, latest, records, training)


def check_base(resumed: Resumable, loaded) -> None:
    """A run resumes only on the base model it started on (quantized the same way)."""
    recorded = resumed.run.get("base_model") or {}
    if not recorded.get("fingerprint") or base_mismatch(recorded, loaded.identity) \
            or resumed.run.get("quantization") != loaded.quantization:
        how = "" if resumed.run.get("quantization") == loaded.quantization else \
            f" (quantized {resumed.run.get('quantization')}, not {loaded.quantization})"
        raise CheckpointMismatch(
            f"the interrupted run {resumed.name} was trained on base model "
            f"{recorded.get('model')!r}{how}, not on the loaded {loaded.identity.get('model')!r}"
            f"; resume it with --model {recorded.get('model')}, or start a new run")


def early_base_check(resumed: Resumable, model_setting: str) -> None:
    """Before loading a model (minutes for a large one): refuse one that is plainly not the
    run's. Paths are compared resolved; the fingerprint check after loading decides."""
    recorded = str((resumed.run.get("base_model") or {}).get("model") or "")
    if recorded and not same_model(recorded, model_setting):
        raise CheckpointMismatch(
            f"the interrupted run {resumed.name} was trained on base model {recorded!r}, not "
            f"on {model_setting!r}; resume it with --model {recorded}, or start a new run")


def fingerprint(value) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def encoding_fingerprint(encoded: list) -> str:
    return fingerprint([[example.input_ids, example.labels] for example in encoded])


def plan_fingerprint(plans: list) -> str:
    return fingerprint([[plan.epoch, plan.micro_batches] for plan in plans])


def check_same_run(resumed: Resumable, encoded: list, skipped: list, plans: list) -> None:
    """The snapshot must tokenize and plan exactly as when the run started: otherwise the
    steps left would train on other data than the ones done."""
    run = resumed.run
    if encoding_fingerprint(encoded) != run.get("encoding_sha256") \
            or list(skipped) != run.get("skipped"):
        raise CheckpointMismatch(
            f"the interrupted run {resumed.name}'s examples no longer tokenize as when it "
            "started (another tokenizer or template); it cannot be resumed: start a new run")
    if plan_fingerprint(plans) != run.get("plan_sha256"):
        raise CheckpointMismatch(
            f"the interrupted run {resumed.name} was planned by sftchat "
            f"{run.get('sftchat_version')}, whose step plan differs from this version's; "
            "it cannot be resumed here: start a new run")


def resume_notice(resumed: Resumable, data_dir: Path, say) -> dict:
    """Tell (`say`: one line) that the run resumes, and whether the dataset has changed since
    it started (it goes on with its own snapshot); the `started` event's fields for it."""
    changed = dataset_changed(resumed, data_dir)
    say(resumed.describe() + (
        "; the dataset has changed since the run started: it goes on with its own snapshot "
        f"of {len(resumed.records)} examples (train again afterwards for the current data)"
        if changed else ""))
    return {"resumed_from_step": resumed.step, "dataset_changed": changed}


@contextlib.contextmanager
def reading(resumed: Resumable | None):
    """Inside: a failure to read `resumed`'s checkpoint is `CheckpointCorrupt`."""
    if resumed is None:
        yield
        return
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the reader raised: one message
        raise corrupt_error(resumed.folder, f"{resumed.latest['folder']}: {exc}") from exc


def saved_anchors(resumed: Resumable) -> list:
    """The base model's anchor answers the run started with, as training examples."""
    from sftchat.prompts import EncodedExample

    return [EncodedExample(input_ids=ids, labels=labels)
            for ids, labels in resumed.run.get("anchors") or []]


def dataset_changed(resumed: Resumable, data_dir: Path) -> bool:
    """Whether the curated dataset differs from the run's snapshot now."""
    from sftchat.dataset.store import ExampleStore, snapshot_hash

    with ExampleStore(data_dir) as store:
        current = [example.to_record() for example in store.snapshot()]
    return snapshot_hash(current) != resumed.run.get("snapshot_sha256")
