"""The QLoRA trainer: setup -> train -> save, on a frozen snapshot of the curated dataset.

`run_training(...)` is what `sftchat train` calls (the TUI runs that command as a subprocess,
which isolates crashes and GPU memory and makes cancel a signal):

1. setup: snapshot the dataset in one read transaction, write it to a hidden staging folder,
   load the base in 4-bit NF4, tokenize every example through `sftchat.prompts` (the same
   template as inference) with the prompt masked out, fit the schedule to the dataset's size
   (`schedule`), and have the base answer the anchor prompts (`anchors`, cached).
2. train: wrap the base with LoRA on all linear layers (or continue from an existing
   adapter); AdamW on the LoRA weights; gradient accumulation; the loss is the summed masked
   cross-entropy divided by the number of learned tokens in the optimizer step, plus a loss
   that keeps what it knew on a few general prompts and the base's own answers to them
   (`regularizer`: distillation and the quiet-adapter penalty by default);
   linear warm-up then cosine decay; gradient clipping; a fixed seed (the step loop is
   `loop.train_loop`). A `step` event per step; the run stops early once every curated
   answer is reproduced. With rejected answers in the dataset, the `objective` adds a
   preference loss (`preference`: DPO on pairs, a KTO-style term on bad answers with no
   replacement). Then `evaluation` measures curated replay and drift on held-out
   prompts, and `preference` the run's preference figures.
3. save: PEFT files (safetensors), `sftchat.json` (with those measures), `train.jsonl`
   (and `rejected.jsonl`, the rejected answers it learned from);
   then one atomic rename publishes `adapters/NAME/`. Any failure or cancel deletes the
   staging folder instead.

Along the way the run writes checkpoints (`checkpoint`, `checkpoint_writer`);
`run_training(..., resume=True)` (`sftchat train --resume`) continues the workspace's
interrupted run from its checkpoint, with the run's own settings, snapshot and anchor
answers, to the adapter the uninterrupted run would have published.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sftchat import __version__
from sftchat.adapters import registry as adapter_registry
from sftchat.config import Settings, TrainingSettings
from sftchat.dataset.store import snapshot_hash
from sftchat.models.cpu_4bit import PackedWeightError
from sftchat.prompts import resolve_template
from sftchat.training.anchors import DRIFT_PROMPTS, REHEARSAL_PROMPTS, base_answers
from sftchat.training.batching import count_learned
from sftchat.training.checkpoint import (Resumable, check_base, check_same_run, clean_stale,
                                         early_base_check, load_interrupted, reading,
                                         resume_notice, saved_anchors)
from sftchat.training.checkpoint_writer import Checkpointer
from sftchat.training.distributed import SINGLE, Ranks
from sftchat.training.errors import TrainingCancelled, TrainingError
from sftchat.training.evaluation import curated_replay, measure_drift
from sftchat.training.events import Emit, first_ids, make_event
from sftchat.training.health import TrainingDiverged, check_drift
from sftchat.training.loop import StopRequested, train_loop
from sftchat.training.preference import (PAIR, ObjectivePlan, PreferenceLoss, encode_items,
                                         plan_objective)
from sftchat.training.regularizer import PER_STEP, AnchorLoss, Anchors, QuietAdapter
from sftchat.training.schedule import Schedule, fit_schedule, plan_schedule
from sftchat.training.snapshot import encode_all, read_snapshot, write_lines
from sftchat.training.workspace_lock import training_lock


def default_adapter_name(adapters_dir: Path) -> str:
    base = "sft-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name, suffix = base, 2
    while (adapters_dir / name).exists():
        name, suffix = f"{base}-{suffix}", suffix + 1
    return name


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- setup


def _use_gradient_checkpointing(training: TrainingSettings, device: str) -> bool:
    if training.gradient_checkpointing == "auto":
        return device == "cuda"  # on CPU memory is plentiful and recomputation is slow
    return training.gradient_checkpointing == "on"


def _wrap_with_lora(loaded, training: TrainingSettings, source,
                    lora_shape: dict | None = None, resume_from: Path | None = None) -> object:
    """LoRA on every linear layer (`lora_shape`, default the settings'), or the `--from`
    adapter made trainable, or a checkpoint's LoRA (`resume_from`, a resumed run). A rank
    other than 0 makes a fresh LoRA of the adapter's shape: DDP gives it rank 0's weights
    before the first step (its machine may not hold the adapter)."""
    from peft import PeftModel, get_peft_model

    from sftchat.adapters.loading import lora_config

    model = loaded.model
    # The base stays exactly as it loaded — the model the chat, the review and `eval` run.
    # PEFT's `prepare_model_for_kbit_training` would cast every norm, the embeddings and the
    # head to float32 on a GPU: a model the chat never runs (and ~2 GB of float32 head and
    # embeddings on a 150k-vocabulary 7B). Only the LoRA weights are float32, in training and
    # in the chat alike (PEFT makes adapter weights float32), as AdamW's master weights.
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if _use_gradient_checkpointing(training, loaded.device):
        # Non-reentrant: no input that requires grad is needed, and a term's hooks see the
        # recomputation (`terms.run_pass`).
        model.gradient_checkpointing_enable({"use_reentrant": False})
    lora_shape = lora_shape or _lora_shape(training, None)
    if resume_from is not None or source is not None:
        model = PeftModel.from_pretrained(model, str(resume_from or source.path),
                                          is_trainable=True)
    else:
        model = get_peft_model(model, lora_config(lora_shape["rank"], lora_shape["alpha"],
                                                  lora_shape["dropout"]))
    if loaded.device == "cpu":
        from sftchat.training.fast_dropout import use_fast_dropout

        use_fast_dropout(model)
    return model


# --------------------------------------------------------------------------- train is in loop.py


# --------------------------------------------------------------------------- save


def _write_meta(staging: Path, run: "PreparedRun", training: TrainingSettings, model,
                metrics: dict, evaluation: dict) -> dict:
    lora = model.peft_config["default"]
    loaded = run.loaded
    preferences = run.preferences
    meta = {
        "format": 1,
        "name": run.name,
        "sftchat_version": __version__,
        "base_model": loaded.identity,
        "quantization": loaded.quantization,
        "device": loaded.device,
        "template": run.template,
        "hyperparameters": asdict(training),
        "schedule": asdict(run.schedule),
        "lora": {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                 "target_modules": sorted(lora.target_modules or [])},
        "from_adapter": (run.source.name if run.source else  # a resumed run: its own
                         run.resumed.run.get("from_adapter") if run.resumed else None),
        "dataset": {
            "snapshot_sha256": snapshot_hash(run.records),
            "examples": len(run.records),
            "example_ids": [record["id"] for record in run.records],
            "learned_tokens": count_learned(run.encoded),
            "truncated_prompts": sum(1 for example in run.encoded if example.prompt.truncated),
            "skipped_too_long": run.skipped,
            "rejected": {
                "objective": run.objective.objective, "pairs": len(run.objective.pairs),
                "avoid": len(run.objective.avoid), "unused": run.objective.unused,
                "skipped_too_long": run.skipped_rejected,
                "ids": [item.rejected_id for item in preferences.items] if preferences else [],
            },
        },
        "metrics": {**metrics, **evaluation},
        "run_id": run.run_id,
        "resumed_at_step": run.resumed.step if run.resumed else None,
        "started_at": run.started_at,
        "finished_at": _now_iso(),
    }
    (staging / adapter_registry.META_FILE).write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta


def run_training(settings: Settings, training: TrainingSettings, emit: Emit,
                 name: str | None = None, from_adapter: str | None = None,
                 stop: threading.Event | None = None, ranks: Ranks = SINGLE,
                 resume: bool = False) -> Path | None:
    """Train on the current dataset and publish `adapters/NAME`; return its path (on a rank
    other than 0, which trains beside rank 0 and publishes nothing: None). `resume`: continue
    the workspace's interrupted run instead (its name, settings and snapshot; alone only).

    Raises `TrainingError` (or `TrainingCancelled` when `stop` is set) with nothing published.
    """
    stop = stop or threading.Event()
    if not ranks.is_main:
        run = setup(settings, training, emit, None, ranks=ranks)
        train(run, run.training, emit, stop, ranks)
        return None
    adapters_dir = settings.adapters_dir
    if name:
        adapter_registry.check_name(name)
    # Held until the adapter is published or its staging folder deleted: the clean-up of
    # interrupted runs, the choice of a free name and the publication never race another run.
    with training_lock(adapters_dir) as lock:
        adapter_registry.clean_leftovers(adapters_dir)
        clean_stale(adapters_dir)   # checkpoints no run can resume
        resumed = None
        if resume:
            assert not ranks.distributed, "a run resumes in one process"
            resumed = load_interrupted(adapters_dir)
            early_base_check(resumed, settings.model)
            name, training, from_adapter = resumed.name, resumed.training, None
        name = name or default_adapter_name(adapters_dir)
        lock.record(name)
        adapter_registry.check_free(adapters_dir, name)  # before an hour of training
        source = adapter_registry.resolve(adapters_dir, from_adapter) if from_adapter else None
        staging = adapter_registry.staging_dir(adapters_dir, name)
        staging.mkdir()
        checkpoints = None
        try:
            run = setup(settings, training, emit, staging, name, source, ranks, resumed)
            checkpoints = Checkpointer(adapters_dir, run, resumed)
            run.run_id = checkpoints.run_id
            model, metrics, evaluation = train(run, training, emit, stop, ranks, checkpoints)
            save(run, training, model, metrics, evaluation)
            if stop.is_set():  # asked during the evaluation or the save
                raise TrainingCancelled("training cancelled; nothing was published")
            target = adapter_registry.publish(staging, adapters_dir, name)
            checkpoints.discard(published=True)
        except BaseException as exc:  # a cancel, a crash: a checkpoint stays resumable
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, TrainingDiverged) and checkpoints:  # a resume would diverge
                checkpoints.discard(published=False)
            if isinstance(exc, TrainingCancelled) and checkpoints and checkpoints.saved_step:
                raise TrainingCancelled(checkpoints.cancel_message(len(run.plans))) from None
            raise
    replayed = evaluation.get("replay")
    if replayed and "not_reproduced" in replayed:  # every id is in sftchat.json
        missed = replayed["not_reproduced"]
        evaluation = {**evaluation, "replay": {**replayed, "not_reproduced": first_ids(missed),
                                               "not_reproduced_count": len(missed)}}
    preferences = evaluation.get("preferences")
    if preferences:
        evaluation = {**evaluation, "preferences": {
            **preferences, "still_given_ids": first_ids(preferences["still_given_ids"])}}
    emit(make_event("finished", name=name, adapter=str(target),
                    final_loss=metrics["final_loss"], steps=metrics["steps"],
                    stopped_early=metrics["stopped_early"],
                    train_seconds=metrics["train_seconds"], **evaluation))
    return target


@dataclass
class PreparedRun:
    """Everything `setup` prepares for `train` and `save`."""

    name: str
    staging: Path | None      # rank 0's staging folder (None on the other ranks)
    started_at: str
    training: TrainingSettings  # rank 0's (every rank plans the same steps)
    records: list[dict]       # the examples trained on (the snapshot less `skipped`)
    skipped: list[int]        # ids of examples too long for max_length
    loaded: object            # models.loader.LoadedModel
    template: str             # the concrete template the adapter is trained (and answers) with
    encoded: list
    schedule: Schedule
    plans: list
    source: object            # the --from adapter's AdapterInfo, or None (or not rank 0)
    lora_shape: dict          # rank, alpha, dropout of the adapter being trained
    anchors: Anchors | None   # the regularizer's pool (None: regularize off)
    anchor_terms: list        # its loss terms: AnchorLoss, and QuietAdapter when weighted
    drift_anchors: list
    snapshot: list[dict]      # every record of the snapshot (`records` and the skipped ones)
    anchor_answers: list      # the base's answers to every anchor prompt (both pools)
    rejected: list[dict]      # the snapshot's rejected answers (what the objective may use)
    objective: ObjectivePlan  # what the run makes of them
    preferences: PreferenceLoss | None   # their loss (None: plain SFT)
    skipped_rejected: list[int]  # ids of rejected answers too long for max_length
    resumed: Resumable | None = None
    run_id: str | None = None  # set by run_training (rank 0): names the run's checkpoints
    setup_seconds: dict = field(default_factory=dict)  # model load, anchor answers


def _lora_shape(training: TrainingSettings, source) -> dict:
    """The LoRA shape the run's adapter will have (the app prepares its swap slot from it):
    the --from adapter's own, else the run's settings."""
    if source is not None:
        config = json.loads((source.path / "adapter_config.json").read_text(encoding="utf-8"))
        return {"rank": config.get("r"), "alpha": config.get("lora_alpha"),
                "dropout": config.get("lora_dropout", 0.0)}
    return {"rank": training.rank, "alpha": training.alpha, "dropout": training.dropout}


def _shared_plan(settings: Settings, training: TrainingSettings, staging: Path | None,
                 name: str | None, source, ranks: Ranks, resumed: Resumable | None) -> dict:
    """What rank 0 decides for every rank: the snapshot trained on, the training settings
    (another machine's command line or sftchat.toml cannot plan other steps), the adapter's
    name and LoRA shape, and the template a --from adapter keeps (None: the setting
    decides)."""
    plan = None
    if resumed is not None:   # the run as it started
        records, rejected = read_snapshot(settings, staging, resumed)
        plan = {"records": records, "rejected": rejected, "name": name,
                "training": training, "lora_shape": resumed.run["lora_shape"],
                "template": resumed.run["template"]}
    elif ranks.is_main:
        records, rejected = read_snapshot(settings, staging, None)
        plan = {"records": records, "rejected": rejected, "name": name,
                "training": training, "lora_shape": _lora_shape(training, source),
                "template": source.meta.get("template") if source is not None else None}
    return ranks.broadcast(plan)


def _same_base(loaded, main_fingerprint: str) -> None:
    """A rank must train on the base rank 0 loaded (a machine with another --model fails
    before the first step, saying so)."""
    if loaded.identity.get("fingerprint") != main_fingerprint:
        raise TrainingError(
            f"this machine loaded {loaded.identity.get('model')!r}, which is not the base "
            "model rank 0 loaded; give every machine the same --model (or sftchat.toml "
            "model)")


def setup(settings: Settings, training: TrainingSettings, emit: Emit, staging: Path | None,
          name: str | None = None, source=None, ranks: Ranks = SINGLE,
          resumed: Resumable | None = None) -> PreparedRun:
    """Snapshot the data, load the base, answer the anchor prompts, plan the steps (a resumed
    run: the checkpoint's snapshot and anchor answers, checked to plan the same steps).

    On rank 0 only: the snapshot (sent to the other ranks), the anchor answers (likewise),
    the `started` event."""
    started_at = resumed.run["started_at"] if resumed else _now_iso()
    shared = _shared_plan(settings, training, staging, name, source, ranks, resumed)
    training = shared["training"]
    # Nothing to learn from for the objective asked: say so before minutes of loading.
    plan_objective(training.objective, shared["records"], shared["rejected"])
    from sftchat.models.loader import load_model
    import torch

    torch.manual_seed(training.seed)
    loading = time.perf_counter()
    loaded = load_model(settings.model, settings.device, settings.quantize,
                        settings.trust_remote_code, progress=_progress_to_stderr,
                        for_training=True)
    if source is not None:
        adapter_registry.check_base(source, loaded.identity)
    if resumed is not None:
        check_base(resumed, loaded)
    # A --from adapter keeps the template it was trained with; otherwise the setting (auto:
    # the model's chat template if it has one, else Alpaca). Either is checked against this
    # tokenizer (ChatML needs its tokens) before anything is trained.
    template = resolve_template(shared["template"] or settings.template, loaded.tokenizer)
    records, encoded, skipped = encode_all(shared["records"], loaded.tokenizer, template,
                                            training.max_length, training.strict)
    objective = plan_objective(training.objective, records, shared["rejected"])
    items, skipped_rejected = encode_items(objective, loaded.tokenizer, template,
                                           training.max_length)
    preferences = PreferenceLoss(items, training.beta, training.preference_weight,
                                 training.batch_size) if items else None
    if staging is not None and items:   # what it learns from, beside train.jsonl
        used = {item.rejected_id for item in items}
        write_lines(staging / adapter_registry.REJECTED_FILE,
                     [record for record in shared["rejected"] if record["id"] in used])
    schedule = fit_schedule(len(encoded), training)
    plans = plan_schedule(schedule, len(encoded), training.seed)
    if resumed is not None:
        check_same_run(resumed, encoded, skipped, plans)
    # The base answers its anchor prompts before any adapter is attached (cached after the
    # first run on this model; a resumed run's are those it started with); rank 0 answers
    # for every rank.
    pools = REHEARSAL_PROMPTS + DRIFT_PROMPTS
    answering = time.perf_counter()
    answers, main_fingerprint = ranks.broadcast(
        (saved_anchors(resumed) if resumed else base_answers(loaded, template, pools),
         loaded.identity.get("fingerprint")) if ranks.is_main else None)
    _same_base(loaded, main_fingerprint)
    setup_seconds = {"load": round(answering - loading, 3),
                     "anchor_answers": round(time.perf_counter() - answering, 3)}
    anchors, anchor_terms = None, []
    if training.regularize != "off":
        anchors = Anchors(answers[:len(REHEARSAL_PROMPTS)])
        anchor_terms = [AnchorLoss(training.regularize, anchors, training.rehearsal_weight)]
        if training.quiet_weight > 0:
            anchor_terms.append(QuietAdapter(anchors, training.quiet_weight))
    if preferences is not None:
        preferences.ride_with(encoded, [record["id"] for record in records])
    truncated = [record["id"] for record, example in zip(records, encoded)
                 if example.prompt.truncated]
    emit(make_event(
        "started", name=shared["name"], base_model=settings.model, examples=len(records),
        truncated_prompts=first_ids(truncated), truncated_count=len(truncated),
        skipped_too_long=first_ids(skipped), skipped_count=len(skipped),
        max_length=training.max_length, template=template,
        total_steps=len(plans), epochs=plans[-1].epoch + 1, batch_size=schedule.batch_size,
        grad_accum=schedule.grad_accum, regularize=training.regularize,
        objective=objective.objective if items else "sft",
        pairs=sum(item.kind == PAIR for item in items),
        avoid=sum(item.kind != PAIR for item in items),
        unused_rejected=objective.unused + len(skipped_rejected),
        lora=shared["lora_shape"], device=loaded.device, ranks=ranks.world_size,
        seconds=setup_seconds,
        **(resume_notice(resumed, settings.data_dir, _progress_to_stderr) if resumed else {}),
    ))
    return PreparedRun(name=shared["name"], staging=staging, started_at=started_at,
                       training=training,
                       records=records, skipped=skipped, loaded=loaded, template=template,
                       encoded=encoded, schedule=schedule, plans=plans, source=source,
                       lora_shape=shared["lora_shape"], anchors=anchors,
                       anchor_terms=anchor_terms,
                       drift_anchors=answers[len(REHEARSAL_PROMPTS):],
                       snapshot=shared["records"], anchor_answers=answers, resumed=resumed,
                       rejected=shared["rejected"], objective=objective,
                       preferences=preferences, skipped_rejected=skipped_rejected,
                       setup_seconds=setup_seconds)


def estimate_memory(run: PreparedRun, training: TrainingSettings):
    """What the run's training will take beyond the loaded model (`training.memory`), from
    its largest pass: a micro-batch of curated examples with the rejected answers of their
    pairs, a step's anchors, or a micro-batch of bad answers."""
    from sftchat.training.memory import estimate

    preferences = run.preferences
    riding = preferences.riding if preferences is not None else {}
    batches = [[run.encoded[i] for i in batch] + [  # a pair's rejected answer rides along
                   preferences.items[item].rejected
                   for i in batch for item in riding.get(i, [])]
               for plan in run.plans for batch in plan.micro_batches]
    quiet_tokens = 0
    if run.anchors is not None:  # a step's anchors: at most PER_STEP, the longest
        anchors = sorted(run.anchors.examples, key=lambda e: -len(e.input_ids))[:PER_STEP]
        batches.append(anchors)
        if any(isinstance(term, QuietAdapter) for term in run.anchor_terms):
            quiet_tokens = len(anchors) * max(len(e.input_ids) for e in anchors)
    if preferences is not None and preferences.loose:  # a micro-batch of items
        sequences = [sequence for i in preferences.loose
                     for sequence in (preferences.items[i].chosen, preferences.items[i].rejected)
                     if sequence is not None]
        batches.append(sorted(sequences, key=lambda e: -len(e.input_ids))
                       [:2 * preferences.batch_size])
    tokens = max(len(batch) * max(len(e.input_ids) for e in batch) for batch in batches)
    learned = max(sum(e.num_learned for e in batch) for batch in batches)
    cuda = run.loaded.device == "cuda"
    return estimate(run.loaded.model.config, run.lora_shape["rank"], tokens, learned,
                    _use_gradient_checkpointing(training, run.loaded.device),
                    compute_bytes=2 if run.loaded.compute_dtype == "bfloat16" else 4,
                    quiet_tokens=quiet_tokens, **({} if cuda else {"overhead_bytes": 0}))


def _check_gpu_memory(run: PreparedRun, training: TrainingSettings, needed) -> None:
    """On CUDA, refuse a run that cannot fit beside what the GPU already holds (the chat's
    model included) before its first step, with what to change (`training.memory`)."""
    if run.loaded.device != "cuda":
        return
    import torch

    from sftchat.training.memory import check_fits

    problem = check_fits(needed, torch.cuda.mem_get_info(run.loaded.model.device)[0],
                         run.schedule.batch_size, training.max_length)
    if problem:
        raise TrainingError(problem)


def train(run: PreparedRun, training: TrainingSettings, emit: Emit, stop: threading.Event,
          ranks: Ranks = SINGLE, checkpoints: Checkpointer | None = None):
    """Wrap the base with LoRA, train (writing `checkpoints`; resuming from theirs), then
    (rank 0) measure replay and drift: (model, metrics, evaluation)."""
    import torch

    from sftchat.training.memory import MemoryUse

    needed = estimate_memory(run, training)
    _check_gpu_memory(run, training, needed)
    use = MemoryUse(run.loaded.device)
    try:
        with reading(run.resumed):   # a checkpoint's unreadable LoRA: CheckpointCorrupt
            model = _wrap_with_lora(run.loaded, training, run.source, run.lora_shape,
                                    run.resumed.step_dir if run.resumed else None)
        use.start()
        metrics, loss_function = train_loop(
            model, run.encoded, run.plans, training, run.loaded.tokenizer.pad_token_id,
            run.loaded.model.device, emit, stop, run.anchors, run.anchor_terms, ranks,
            checkpoints, run.preferences)
        used = use.used_bytes()
        metrics["memory_estimate_mb"] = round(needed.total / 2**20)
        metrics["memory_used_mb"] = None if used is None else round(used / 2**20)
        if stop.is_set():
            raise StopRequested
        if not ranks.is_main:
            return model, metrics, None
        evaluating = time.perf_counter()
        evaluation = {
            "replay": curated_replay(loss_function, run.encoded,
                                     [record["id"] for record in run.records],
                                     training.seed).to_dict(),
            "drift": measure_drift(loss_function, model, run.drift_anchors),
            "preferences": ({"objective": run.objective.objective,
                             **run.preferences.measure(loss_function)}
                            if run.preferences else None),
        }
        metrics["seconds"] = {**run.setup_seconds, **metrics["seconds"],
                              "evaluation": round(time.perf_counter() - evaluating, 3)}
        check_drift(evaluation["drift"], training.max_drift, training.lr)
    except StopRequested:
        if checkpoints is not None:   # the last complete step stays resumable
            checkpoints.on_stop()
        raise TrainingCancelled("training cancelled; nothing was published") from None
    except PackedWeightError as exc:
        raise TrainingError(f"{exc}; nothing was published (a bitsandbytes release sftchat "
                            "does not know: try --no-quantize, and please report it)") from exc
    except torch.OutOfMemoryError as exc:
        raise TrainingError(
            f"CUDA ran out of memory at batch size {run.schedule.batch_size} and max length "
            f"{training.max_length}; retry with a smaller --batch-size (raise grad_accum "
            "to keep the effective batch) or a smaller --max-length"
        ) from exc
    return model, metrics, evaluation


def save(run: PreparedRun, training: TrainingSettings, model, metrics: dict,
         evaluation: dict) -> None:
    """PEFT files (safetensors), sftchat.json, train.jsonl (written by setup) into staging."""
    model.save_pretrained(str(run.staging), safe_serialization=True)
    _write_meta(run.staging, run, training, model, metrics, evaluation)


def _progress_to_stderr(message: str) -> None:
    print(f"sftchat: {message}", file=sys.stderr, flush=True)
