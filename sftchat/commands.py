"""Handlers of the `sftchat` subcommands: each reads its arguments, calls one layer, prints.

`data` and `adapters` handlers import only the store and the adapter registry (no torch);
`ask` and `train` import the engine and trainer lazily. Output meant for programs (`--json`,
`ask`'s answer, `data add`'s id) goes to stdout; progress and notices go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from dataclasses import replace

from sftchat.adapters import registry as adapter_registry
from sftchat.config import GenerationSettings, Settings, load_settings, validate_generation
from sftchat.config import validate_training
from sftchat.dataset.pins import Pins
from sftchat.errors import SftchatError
from sftchat.text import StreamSanitizer, one_line, strip_control
from sftchat.training.options import check_resume_options, training_overrides
from sftchat.training.events import outcome_summary, preference_summary

class CommandError(SftchatError):
    """A command was used wrongly in a way argparse cannot see (message says how to fix)."""


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        workspace=getattr(args, "workspace", None),
        model=getattr(args, "model", None),
        device=getattr(args, "device", None),
        no_quantize=getattr(args, "no_quantize", False),
        template=getattr(args, "template", None),
        trust_remote_code=getattr(args, "trust_remote_code", None),
    )


def _text_arg(value: str | None) -> str | None:
    """'-' means: read the value from stdin (handy for multi-line text)."""
    if value == "-":
        return sys.stdin.read().rstrip("\n")
    return value


def _text_args(args: argparse.Namespace, *names: str) -> dict[str, str | None]:
    """The text options `names` of `args`, with '-' read from stdin — which can be read only
    once: two options given '-' are refused (the second would silently get "")."""
    dashed = [f"--{name}" for name in names if getattr(args, name, None) == "-"]
    if len(dashed) > 1:
        raise CommandError(f"only one of {' and '.join(dashed)} can be read from stdin ('-'); "
                           "give the others as text")
    return {name: _text_arg(getattr(args, name, None)) for name in names}


# --------------------------------------------------------------------------- data


def _store(settings: Settings):
    from sftchat.dataset.store import ExampleStore

    return ExampleStore(settings.data_dir)


def cmd_data(args: argparse.Namespace) -> int:
    from sftchat.dataset import display, formats

    settings = _settings(args)
    command = args.data_command
    with _store(settings) as store:
        if command == "add":
            _data_add(store, args)
        elif command == "list":
            examples = store.iter_examples(search=args.search, limit=args.limit)
            if args.json:
                formats.write_json_lines(sys.stdout, (example.to_dict() for example in examples),
                                         as_list=True)
            else:
                for example in examples:
                    _print_text(display.example_line(example))
        elif command == "show":
            example = store.get(args.id)
            rejected = store.rejected_for(example.id)
            if args.json:
                print(json.dumps({**example.to_dict(),
                                  "rejected": [r.response for r in rejected]},
                                 ensure_ascii=False, indent=2))
            else:
                _print_text(display.example_text(example, rejected))
        elif command == "edit":
            if all(value is None for value in (args.instruction, args.response, args.input,
                                               args.system)):
                raise CommandError("nothing to change: give --instruction, --response, "
                                   "--input and/or --system")
            text = _text_args(args, "instruction", "response", "input", "system")
            example = store.update(args.id, instruction=text["instruction"],
                                   response=text["response"], input=text["input"],
                                   system=text["system"])
            print(example.id)
        elif command == "rm":
            store.delete(args.id)
            print(f"removed example {args.id}", file=sys.stderr)
        elif command == "stats":
            stats = store.stats()
            if args.json:
                print(json.dumps(stats, ensure_ascii=False, indent=2))
            else:
                for key, value in stats.items():
                    print(f"{key:<22} {value}")
        elif command == "import":
            imported = formats.import_file(args.file, args.format)
            source = f"import:{args.file}"
            ids = store.add_many((r["instruction"], r["input"], r["response"], None, source,
                                  r.get("system", ""), r.get("context", ()))
                                 for r in imported.records)
            kept = [f"{count} {what}" for count, what in (
                (imported.multi_turn, "with earlier turns"),
                (imported.system_messages, "with a system prompt")) if count]
            print(f"imported {len(ids)} examples (ids {ids[0]}–{ids[-1]}, {imported.schema}"
                  f"{'; ' + ', '.join(kept) if kept else ''})", file=sys.stderr)
        elif command == "export":
            fmt = formats.export_format_for(args.file, args.format)
            preference = fmt in formats.PREFERENCE_FORMATS
            records = store.preference_records(fmt) if preference else \
                (example.to_record() for example in store.iter_examples())
            count = formats.write_records(args.file, records, fmt, flatten=args.flatten)
            what = "preference records" if preference else "examples"
            print(f"exported {count} {what} to {args.file} "
                  f"({formats.describe_export(args.file, fmt)})", file=sys.stderr)
    return 0


def _data_add(store, args: argparse.Namespace) -> None:
    """`data add`: an example (its id on stdout), or with --rejected and no --response, bad
    answers with no replacement (what ctrl+x keeps), one 'rejected answer ID kept' line each
    — rejected-answer ids, which `data show`/`edit`/`rm` do not take."""
    # (`sftchat.cli` refuses neither --response nor --rejected as a usage error.)
    # '-' is stdin for --rejected too, and stdin is read once: count it with the others.
    names = ("instruction", "response", "input", "system")
    dashed = [f"--{name}" for name in names if getattr(args, name) == "-"]
    dashed += ["--rejected" for answer in args.rejected if answer == "-"]
    if len(dashed) > 1:
        raise CommandError(f"only one of {' and '.join(dashed)} can be read from stdin ('-'); "
                           "give the others as text")
    text = _text_args(args, *names)
    rejected = [_text_arg(answer) for answer in args.rejected]
    if args.response is not None:
        print(store.add(text["instruction"], text["response"], input=text["input"] or "",
                        source="cli", rejected=[(answer, "cli") for answer in rejected],
                        system=text["system"] or ""))
        return
    with store.transaction():  # all the answers or none
        ids = [store.add_rejected(text["instruction"], answer, text["input"] or "",
                                  source="cli", example_id=None, system=text["system"] or "")
               for answer in rejected]
    for rejected_id in ids:
        print(f"rejected answer {rejected_id} kept (no replacement yet)")


def _print_text(text: str) -> None:
    """Print stored text (which may hold model output) safely for a terminal."""
    print(strip_control(text) if sys.stdout.isatty() else text)


# --------------------------------------------------------------------------- adapters


def cmd_adapters(args: argparse.Namespace) -> int:
    settings = _settings(args)
    folder = settings.adapters_dir
    if args.adapters_command == "list":
        from sftchat.adapters.lineage import describe_all

        rows = describe_all(adapter_registry.list_adapters(folder))
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=2))
        elif not rows:
            print("no adapters yet; train one with `sftchat train`", file=sys.stderr)
        for row in rows if not args.json else []:
            _print_text(_adapter_line(row))
    elif args.adapters_command == "show":
        info = adapter_registry.resolve(folder, args.name)
        if info is None:
            raise CommandError("'none' means the base model, which has no metadata; "
                               "name an adapter (see `sftchat adapters list`)")
        print(json.dumps({"name": info.name, "path": str(info.path), **info.meta},
                         ensure_ascii=False, indent=2))
        metrics = info.meta.get("metrics") or {}
        summary = outcome_summary(metrics.get("replay"), metrics.get("drift"),
                                  metrics.get("preferences"))
        if summary:
            # The JSON on stdout stays machine-readable; the summary is for the reader.
            print(f"{info.name}: {summary}", file=sys.stderr)
    elif args.adapters_command == "diff":
        from sftchat.adapters.lineage import dataset_change, read_snapshot

        before, after = (adapter_registry.resolve(folder, name) for name in (args.a, args.b))
        if before is None or after is None:
            raise CommandError("'none' (the base model) has no dataset; name two adapters")
        change = dataset_change(before, after)
        if args.json:
            print(json.dumps(change.to_dict()))
        else:
            snapshot = {**read_snapshot(before), **read_snapshot(after)}
            for sign, ids in (("+", change.added), ("~", change.edited), ("-", change.removed)):
                for example_id in ids:
                    record = snapshot[example_id]
                    _print_text(f"{sign} {example_id:>6}  {one_line(record['instruction'], 50):<50}"
                                f"  {one_line(record.get('output', ''), 50)}")
            print(f"{before.name} -> {after.name}: {len(change.added)} added, "
                  f"{len(change.edited)} edited, {len(change.removed)} removed",
                  file=sys.stderr)
    elif args.adapters_command == "rm":
        adapter_registry.remove(folder, args.name)
        print(f"removed adapter {args.name}", file=sys.stderr)
    return 0


def _adapter_line(row: dict) -> str:
    """One `adapters list` line: name, date, size of its data and what changed since the
    adapter before it, parent, loss, replay, drift, decision, base model."""
    loss = f"{row['final_loss']:.4f}" if isinstance(row["final_loss"], float) else "-"
    replay, drift = row["replay"] or {}, row["drift"] or {}
    learned = f"{replay['reproduced']}/{replay['examples']}" if replay.get("examples") else "-"
    change = (f"×{drift['perplexity_ratio']:.2f}"
              if drift.get("perplexity_ratio") is not None else "-")
    delta = row["dataset_change"]
    data = f"+{len(delta['added'])} ~{len(delta['edited'])} -{len(delta['removed'])}"
    parent = f"from {row['parent']}" if row["parent"] else ""
    return (f"{row['name']:<24} {row['created'][:16]:<16} {row['examples']:>5} ex {data:<12} "
            f"{parent:<14} loss {loss:<7} replay {learned:<7} drift {change:<6} "
            f"{row['decision'] or 'undecided':<10} {one_line(str(row['base_model']), 40)}")


# --------------------------------------------------------------------------- pins


def cmd_pins(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _store(settings) as store:
        if args.pins_command == "list":
            pins = Pins(store).all()
            if args.json:
                print(json.dumps([pin.to_dict() for pin in pins], ensure_ascii=False,
                                 indent=2))
            elif not pins:
                print("no pins yet; pin a prompt with `sftchat pins add` or /pin in the chat",
                      file=sys.stderr)
            for pin in pins if not args.json else []:
                _print_text(f"{pin.id:>6}  {one_line(pin.instruction, 50):<50}  "
                            f"{one_line(pin.response, 60)}")
        elif args.pins_command == "add":
            text = _text_args(args, "instruction", "response", "input")
            print(Pins(store).add(text["instruction"], text["response"],
                                 input=text["input"] or ""))
        elif args.pins_command == "rm":
            Pins(store).remove(args.id)
            print(f"removed pin {args.id}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- ask


def cmd_ask(args: argparse.Namespace) -> int:
    settings = _settings(args)
    overrides = {key: value for key, value in (
        ("max_new_tokens", args.max_new_tokens), ("temperature", args.temperature),
        ("top_p", args.top_p), ("seed", args.seed)) if value is not None}
    generation: GenerationSettings = validate_generation(
        replace(settings.generation, **overrides), "ask")
    instruction, input_text, history, system = _ask_question(args, settings.system)
    # Resolve the adapter name before the (slow) model load, so a typo fails at once.
    adapter_registry.resolve(settings.adapters_dir, args.adapter)
    from sftchat.engine import ChatEngine

    engine = ChatEngine.from_settings(settings)
    engine.use_adapter(args.adapter)
    answer = engine.generate(instruction, history=history, input=input_text, system=system,
                             settings=generation)
    if answer.notice:
        print(f"sftchat: {answer.notice}", file=sys.stderr)
    sanitizer = StreamSanitizer() if sys.stdout.isatty() else None
    for piece in answer:
        sys.stdout.write(sanitizer.feed(piece) if sanitizer else piece)
        sys.stdout.flush()
    sys.stdout.write((sanitizer.flush() if sanitizer else "") + "\n")
    return 0


def _ask_question(args: argparse.Namespace, default_system: str):
    """(instruction, input, earlier turns, system prompt) of `ask`, checked before the model
    loads. The system prompt: the --messages file's system message, else --system, else the
    workspace's `system` setting."""
    from sftchat.dataset.formats import read_conversation, read_text

    system = default_system if args.system is None else args.system
    if args.messages is None:
        if args.prompt is None:
            raise CommandError("nothing to ask: give a PROMPT ('-' reads it from stdin) or "
                               "--messages FILE")
        if args.prompt == "-" and args.input == "-":
            raise CommandError(
                "only one of the prompt and --input can be read from stdin ('-')")
        prompt = _text_arg(args.prompt)  # '-': from stdin, beyond argv's size limit
        if not prompt.strip():
            raise CommandError(
                "the prompt is empty: give some text, or '-' to read it from stdin")
        return prompt, _text_arg(args.input) or "", (), system
    if args.prompt is not None or args.input:
        raise CommandError("--messages FILE is the whole question: give no PROMPT or "
                           "--input with it (put the text in the file's last user message)")
    where = "stdin" if args.messages == "-" else args.messages
    text = sys.stdin.read() if args.messages == "-" else read_text(Path(args.messages))
    conversation = read_conversation(where, text)
    if conversation.system and args.system is not None:
        raise CommandError(f"{where} has a system message and --system was given too; keep "
                           "one of them")
    return conversation.instruction, "", conversation.context, conversation.system or system


# --------------------------------------------------------------------------- eval


def _eval_pair(adapters_dir, names: list[str]) -> tuple[str | None, str]:
    """(current, candidate): by default the latest adapter against the one before it (or
    the base model); one name: it against the adapter before it; two: in that order."""
    if len(names) > 2:
        raise CommandError("give at most two --adapter: the current one, then the candidate")
    found = [info.name for info in adapter_registry.list_adapters(adapters_dir)]
    if len(names) == 2:
        for name in names:
            adapter_registry.resolve(adapters_dir, name)  # a typo fails before the load
        return (None if names[0] == "none" else names[0]), names[1]
    candidate_info = adapter_registry.resolve(adapters_dir, names[0] if names else "latest")
    if candidate_info is None:
        raise CommandError("the candidate must be an adapter; 'none' is the base model")
    index = found.index(candidate_info.name)
    return (found[index - 1] if index > 0 else None), candidate_info.name


def cmd_eval(args: argparse.Namespace) -> int:
    from sftchat.dataset.formats import read_prompts
    from sftchat.engine import ChatEngine
    from sftchat.adapters.comparison import compare, pair_rejected

    settings = _settings(args)
    current, candidate = _eval_pair(settings.adapters_dir, args.adapter)
    prompts = read_prompts(args.prompts)
    with _store(settings) as store, store.transaction(read_only=True):
        examples, pins = store.snapshot(), Pins(store).all()
        rejected = pair_rejected(examples, list(store.iter_rejected()))
    engine = ChatEngine.from_settings(settings)
    result = compare(engine, current, candidate, examples, pins, prompts,
                     settings.training.max_length, seed=settings.training.seed,
                     rejected=rejected)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        pins_total, bad_total = len(result.pins), len(result.rejected)
        for model, role in ((result.current, "current"), (result.candidate, "candidate")):
            drift = (model.drift or {}).get("perplexity_ratio")
            _print_text(f"{one_line(model.label, 28):<28} {role:<9}  curated "
                        f"{model.curated}/{model.examples:<4} pins {model.pins_kept}/"
                        f"{pins_total:<3} drift {f'×{drift:.2f}' if drift else '-'}"
                        + (f"  bad answers avoided {model.avoided}/{bad_total}"
                           if bad_total else ""))
        if result.candidate.preferences:
            _print_text(f"{result.candidate.label}'s training run: "
                        + preference_summary(result.candidate.preferences))
        for index in result.broken_pins:
            pin = result.pins[index]
            _print_text(f"pin {pin.id} changed: {one_line(pin.instruction, 40)}\n"
                        f"  accepted:  {one_line(pin.response, 70)}\n"
                        f"  candidate: {one_line(result.candidate.pin_answers[index], 70)}")
        for index in result.newly_given:
            bad, _ = result.rejected[index]
            _print_text(f"bad answer {bad.id} came back: {one_line(bad.instruction, 40)}\n"
                        f"  rejected:  {one_line(bad.response, 70)}\n"
                        f"  candidate: {one_line(result.candidate.bad_answers[index], 70)}")
        for index, prompt in enumerate(result.prompts):
            _print_text(f"prompt: {one_line(prompt, 60)}\n"
                        f"  {result.current.label}: "
                        f"{one_line(result.current.prompt_answers[index], 70)}\n"
                        f"  {result.candidate.label}: "
                        f"{one_line(result.candidate.prompt_answers[index], 70)}")
        print(result.verdict(), file=sys.stderr)
    if args.fail_on == "regression" and result.regression:
        print(f"sftchat: regression: {result.verdict()}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- train


def _training_settings(args: argparse.Namespace, settings: Settings):
    return validate_training(replace(settings.training, **training_overrides(args)), "train")


def cmd_train(args: argparse.Namespace) -> int:
    from sftchat.train_command import launch_ranks, train_in_process
    from sftchat.training.distributed import (SINGLE, LaunchPlan, Ranks, check_plan,
                                              resolve_nproc)

    settings = _settings(args)
    if getattr(args, "resume", False):  # its own settings, one process (training.checkpoint)
        check_resume_options(args, *[flag for flag, given in (
            ("--nnodes", args.nnodes != 1), ("--node-rank", args.node_rank != 0),
            ("--rdzv-endpoint", args.rdzv_endpoint)) if given])
        return train_in_process(args, settings, settings.training, SINGLE)
    training = _training_settings(args, settings)
    ranks = Ranks.from_environment()
    if ranks is not None:  # started by torchrun: one rank of a run
        return train_in_process(args, settings, training, ranks)
    plan = LaunchPlan(resolve_nproc(training.nproc, settings.device), args.nnodes,
                      args.node_rank, args.rdzv_endpoint)
    check_plan(plan, settings.device)
    if plan.launches:
        return launch_ranks(args, settings, plan)
    return train_in_process(args, settings, training, SINGLE)


def cmd_export(args: argparse.Namespace) -> int:
    import signal

    from sftchat.export.exporter import export_adapter

    settings = _settings(args)

    def stop(signum, frame):
        # SIGTERM (the app's cancel) unwinds like ctrl+c: the staging folder is removed.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    def progress(message: str) -> None:
        if args.json:
            print(json.dumps({"event": "progress", "message": message}), flush=True)
        else:
            print(message, file=sys.stderr, flush=True)

    try:
        result = export_adapter(settings, args.adapter, Path(args.to), args.export_format,
                                outtype=args.outtype, dtype=args.dtype, base=args.base,
                                force=args.force, progress=progress)
    except SftchatError as exc:
        if not args.json:
            raise
        print(json.dumps({"event": "failed", "error": str(exc)}), flush=True)
        return 1
    if args.json:
        print(json.dumps({"event": "finished", **result.to_dict()}), flush=True)
        return 0
    for name in result.files:
        _print_text(str(result.folder / name))
    if result.base_gguf:
        _print_text(f"base GGUF: {result.base_gguf}")
    _print_text(f"run it: {result.next_step}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from sftchat.tui.app import create_app

    settings = _settings(args)
    create_app(settings).run()
    return 0


def dispatch(args: argparse.Namespace) -> int:
    command = args.command or "chat"
    handler = {"chat": cmd_chat, "data": cmd_data, "adapters": cmd_adapters, "ask": cmd_ask,
               "train": cmd_train, "pins": cmd_pins, "eval": cmd_eval,
               "export": cmd_export}[command]
    return handler(args)
