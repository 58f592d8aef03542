"""Writing a run's checkpoints, and putting a resumed run back where its checkpoint was.

`Checkpointer` is the training loop's side of `checkpoint` (which says where checkpoints
live, what they hold, how long they stay, and finds and checks one to resume):

- when: every `checkpoint_every` optimizer steps ("auto": every `AUTO_SECONDS` of training),
  always between two steps, so gradient accumulation never straddles a checkpoint; and at a
  cancel, when the run already has one (the generators are captured at each step's start,
  so a cancel mid-step saves that boundary: the weights and the optimizer only change at the
  step's end);
- how: into `step-N.tmp`, every file fsynced and its sha256 recorded, renamed to `step-N`,
  and only then named by `latest.json` (itself replaced atomically): a kill at any instant
  leaves the previous checkpoint whole;
- resuming: AdamW's moments, the learning-rate schedule, the loop's state (`LoopState`) and
  every random generator (Python's, NumPy's, torch's: LoRA dropout draws from it) come back
  as they were after the checkpoint's step; the LoRA weights come back with the model
  (`trainer._wrap_with_lora`). The steps after it are the uninterrupted run's, to the bit.

Imports torch only inside the functions that need it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sftchat import __version__
from sftchat.adapters import registry as adapter_registry
from sftchat.config import AUTO
from sftchat.files import file_sha256
from sftchat.training.checkpoint import (LATEST_FILE, RUN_FILE, FORMAT, Resumable, corrupt_error,
                                         fsync_path, now_iso, read_json, remove_folder,
                                         write_json_atomic, checkpoint_dir, checkpoint_folders,
                                         encoding_fingerprint, plan_fingerprint)

STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
AUTO_SECONDS = 120.0   # checkpoint_every = "auto": one checkpoint per this much training


@dataclass
class LoopState:
    """Where a run is between two optimizer steps: what a checkpoint holds besides the LoRA
    weights, the optimizer and the schedule (`loop.train_loop` keeps it up to date)."""

    step: int = 0                       # optimizer steps done
    losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    learned_now: list[bool] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0                # of training so far, interrupted processes' included
    anchor_cursor: int = 0              # the regularizer's place in its anchor cycle
    met_now: list[bool] = field(default_factory=list)   # per preference item: met
    preference_cursor: int = 0          # the preference loss's place in its items


# --------------------------------------------------------------------------- generators


def capture_rng() -> dict:
    """Every random generator a step may draw from (dropout: torch's)."""
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": None,
             "numpy": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:
        name, keys, position, has_gauss, cached = sys.modules["numpy"].random.get_state()
        state["numpy"] = [name, [int(k) for k in keys], position, has_gauss, cached]
    return state


def restore_rng(state: dict) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy") is not None:
        import numpy

        name, keys, position, has_gauss, cached = state["numpy"]
        numpy.random.set_state((name, numpy.array(keys, dtype=numpy.uint32), position,
                                has_gauss, cached))


# --------------------------------------------------------------------------- writing


def run_record(run, run_id: str) -> dict:
    """run.json of a `trainer.PreparedRun`."""
    from sftchat.dataset.store import snapshot_hash

    loaded = run.loaded
    return {
        "format": FORMAT, "run_id": run_id, "name": run.name, "sftchat_version": __version__,
        "base_model": loaded.identity, "quantization": loaded.quantization,
        "device": loaded.device, "template": run.template,
        "training": asdict(run.training), "lora_shape": run.lora_shape,
        "from_adapter": run.source.name if run.source else None,
        "started_at": run.started_at, "total_steps": len(run.plans),
        "snapshot_sha256": snapshot_hash(run.snapshot),
        "example_ids": [record["id"] for record in run.snapshot],
        "skipped": run.skipped, "encoding_sha256": encoding_fingerprint(run.encoded),
        "plan_sha256": plan_fingerprint(run.plans),
        "anchors": [[example.input_ids, example.labels] for example in run.anchor_answers],
        "rejected": run.rejected,
    }


class Checkpointer:
    """Writes one run's checkpoints (rank 0 only) and restores a resumed one.

    The loop calls `restore` (a resumed run), `begin` just before its first step (handing
    over what a checkpoint saves), `at_boundary` at the start of every step and `after_step`
    after every step; the trainer calls `on_stop` when the run is cancelled."""

    def __init__(self, adapters_dir: Path, run, resumed: Resumable | None = None) -> None:
        self.adapters_dir = adapters_dir
        self.folder = checkpoint_dir(adapters_dir, run.name)
        self.run = run
        self.every = run.training.checkpoint_every
        self.resumed = resumed
        self.run_id = resumed.run["run_id"] if resumed else os.urandom(8).hex()
        self.saved_step: int | None = resumed.step if resumed else None
        self._saved_clock = time.perf_counter()
        self._boundary: tuple[int, dict] | None = None
        self._rng: dict | None = None
        self.layout: str | None = None   # the resumed run's batch layout
        self._loop: tuple | None = None   # (state, model, optimizer, scheduler, loss function)

    # ----------------------------------------------------------------- resuming

    def restore(self, optimizer, scheduler, parameter_names: list[str]) -> LoopState:
        """The optimizer, the schedule and the loop's state as the checkpoint left them (the
        LoRA weights were loaded with the model: `trainer._wrap_with_lora`)."""
        import torch

        assert self.resumed is not None
        step_dir = self.resumed.step_dir
        try:
            blob = torch.load(step_dir / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
            saved = json.loads((step_dir / STATE_FILE).read_text(encoding="utf-8"))
            if saved["parameters"] != parameter_names:
                raise ValueError("its LoRA parameters are not the model's")
            optimizer.load_state_dict(blob["optimizer"])
            scheduler.load_state_dict(blob["scheduler"])
            self._rng = {**torch.load(step_dir / RNG_FILE, weights_only=True),
                         "python": saved["rng"]["python"], "numpy": saved["rng"]["numpy"]}
            self.layout = saved["layout"]
            state = LoopState(**saved["loop"])
        except Exception as exc:  # noqa: BLE001 - any unreadable piece: one message
            raise corrupt_error(self.folder, f"{self.resumed.latest['folder']}: {exc}") from exc
        return state

    def begin(self, state: LoopState, model, optimizer, scheduler, loss_function) -> None:
        """Just before the loop's first step: what a checkpoint saves (`state` is kept up to
        date by the loop); a resumed run's generators go back to where they were after the
        checkpoint's step; the clock of "auto" starts."""
        self._loop = (state, model, optimizer, scheduler, loss_function)
        if self._rng is not None:
            restore_rng(self._rng)
        self._saved_clock = time.perf_counter()

    # ----------------------------------------------------------------- saving

    def at_boundary(self) -> None:
        """Before a step: remember the generators, so that a cancel mid-step can save the
        boundary's state (the weights and the optimizer do not change until the step's end)."""
        if self.saved_step is not None:   # only a run that has a checkpoint saves at a cancel
            self._boundary = (self._loop[0].step, capture_rng())

    def after_step(self) -> None:
        if self._due(self._loop[0].step):
            self.save()

    def on_stop(self) -> None:
        """A cancel: bring the run's checkpoint up to its last complete step (a run with no
        checkpoint yet writes none: it had not trained long enough to be worth one)."""
        if self._loop is None or self.saved_step is None or self._loop[0].step <= self.saved_step:
            return
        # Stopped mid-step: the generators as that step found them; between two steps (the
        # loop was done), as they are.
        step, rng = self._boundary or (None, None)
        self.save(rng if step == self._loop[0].step else None)

    def _due(self, step: int) -> bool:
        if self.every == AUTO:
            return time.perf_counter() - self._saved_clock >= AUTO_SECONDS
        return bool(self.every) and step % int(self.every) == 0

    def _start(self) -> None:
        """Before this run's first checkpoint: replace any other run's, then record the run."""
        for folder in checkpoint_folders(self.adapters_dir):
            if folder != self.folder or (read_json(folder / RUN_FILE) or {}).get("run_id") \
                    != self.run_id:
                remove_folder(folder)
        self.folder.mkdir(exist_ok=True)
        snapshot = self.folder / adapter_registry.SNAPSHOT_FILE
        if not (self.folder / RUN_FILE).exists():
            temporary = snapshot.with_name(f".{snapshot.name}.tmp")
            shutil.copyfile(self.run.staging / adapter_registry.SNAPSHOT_FILE, temporary)
            fsync_path(temporary)
            os.replace(temporary, snapshot)
            write_json_atomic(self.folder / RUN_FILE, run_record(self.run, self.run_id))

    def save(self, rng: dict | None = None) -> None:
        """A checkpoint of the loop's state now (`rng`: the generators, default as they are)."""
        import torch

        state, model, optimizer, scheduler, loss_function = self._loop
        if self.saved_step is None or not self.folder.exists():
            self._start()
        rng = rng or capture_rng()
        name = f"step-{state.step:06d}"
        temporary = self.folder / f"{name}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        model.save_pretrained(str(temporary), safe_serialization=True)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   temporary / OPTIMIZER_FILE)
        torch.save({"torch": rng["torch"], "cuda": rng["cuda"]}, temporary / RNG_FILE)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        (temporary / STATE_FILE).write_text(json.dumps({
            "loop": asdict(state), "layout": loss_function.layout, "parameters": names,
            "rng": {"python": rng["python"], "numpy": rng["numpy"]}}), encoding="utf-8")
        files = {}
        for path in temporary.iterdir():
            fsync_path(path)
            files[path.name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
        fsync_path(temporary)
        final = self.folder / name
        shutil.rmtree(final, ignore_errors=True)   # left by a kill before latest.json named it
        os.replace(temporary, final)
        fsync_path(self.folder)
        write_json_atomic(self.folder / LATEST_FILE, {
            "step": state.step, "folder": name, "files": files, "saved_at": now_iso(),
            "pid": os.getpid()})
        for old in self.folder.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        self.saved_step = state.step
        self._saved_clock = time.perf_counter()

    def discard(self, published: bool) -> None:
        """The run published (its name is taken now: any checkpoint of that name is of no
        more use), or failed in a way a resume would repeat (only its own is removed)."""
        ours = (read_json(self.folder / RUN_FILE) or {}).get("run_id") == self.run_id
        try:
            if published or ours:
                remove_folder(self.folder)
        except OSError:  # never fail a published run: the next run's `clean_stale` removes it
            pass

    def cancel_message(self, total_steps: int) -> str | None:
        """What a cancelled run says about resuming (None: it has no checkpoint)."""
        if self.saved_step is None:
            return None
        return (f"training cancelled at step {self.saved_step}/{total_steps}; nothing was "
                "published, and its checkpoint is kept: `sftchat train --resume` continues it")
