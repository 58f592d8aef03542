"""`sftchat train` in this process: alone, as one rank under torchrun, or launching every
rank through torchrun (`training.distributed.launch`). Owns what the process does around the
run: its events (JSON lines or human lines), SIGINT/SIGTERM as a cancel, and exactly one
terminal event (finished, cancelled or failed) from rank 0. `commands.cmd_train` decides
which; nothing here reads the command line beyond the parsed `args` it is given."""

from __future__ import annotations

import signal
import sys
import threading

from sftchat.config import Settings
from sftchat.errors import SftchatError


def train_in_process(args, settings: Settings, training, ranks) -> int:
    """Train in this process (alone, or as one rank under torchrun): rank 0 writes the events
    and ends them with exactly one of finished / cancelled / failed."""
    from sftchat.training.distributed import is_peer_failure, report_outcome
    from sftchat.training.events import EXIT_CANCELLED, json_emitter, make_event, text_emitter
    from sftchat.training.errors import TrainingCancelled
    from sftchat.training.trainer import run_training

    emit = json_emitter() if args.json else text_emitter()
    if not ranks.is_main:
        emit = _ignore_event
    stop = threading.Event()

    def request_stop(signum, frame):
        stop.set()
        if not ranks.distributed:
            # A second signal stops at once; the next run cleans up what is left. (A rank
            # waits for the others at the step's end; torchrun kills it if that takes long.)
            signal.signal(signum, signal.SIG_DFL)

    previous = {number: signal.signal(number, request_stop)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ranks.distributed:
            from sftchat.models.loader import resolve_device
            from sftchat.training.distributed import stop_when_orphaned

            stop_when_orphaned(stop)
            ranks.start(resolve_device(settings.device))
        run_training(settings, training, emit, name=args.name,
                     from_adapter=args.from_adapter, stop=stop, ranks=ranks,
                     resume=getattr(args, "resume", False))
    except TrainingCancelled as exc:
        if args.json and ranks.is_main:
            emit(make_event("cancelled", message=str(exc)))
        report_outcome(ranks, "cancelled", str(exc), emitted=ranks.is_main)
        if ranks.is_main:
            print(f"sftchat: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:
        if ranks.distributed and is_peer_failure(exc):
            # Another rank went away: the launcher says which and why.
            report_outcome(ranks, "peer_lost", str(exc))
            return 1
        user_error = isinstance(exc, SftchatError)
        message = str(exc) if user_error else f"{type(exc).__name__}: {exc}"
        if args.json and ranks.is_main:
            emit(make_event("failed", message=message))
        report_outcome(ranks, "failed", message, emitted=ranks.is_main)
        if ranks.is_main or args.debug:
            raise
        return 1  # the launcher reports it, naming this rank
    else:
        report_outcome(ranks, "finished", emitted=ranks.is_main)
    finally:
        for number, handler in previous.items():  # as they were (a caller in-process)
            signal.signal(number, handler)
        ranks.finish()
    return 0


def _ignore_event(event: dict) -> None:
    """A rank other than 0 trains silently: rank 0 speaks for the run."""


def launch_ranks(args, settings: Settings, plan) -> int:
    """Run this same `sftchat train` as every rank under torchrun (`distributed.launch`)."""
    from sftchat.models.loader import resolve_device, resolve_model_path
    from sftchat.training.distributed import launch
    from sftchat.training.events import json_emitter, make_event

    device = resolve_device(settings.device)
    # Build the built-in model or convert a GGUF file once, before the ranks would race to.
    resolve_model_path(settings.model, settings.trust_remote_code,
                       progress=lambda message: print(f"sftchat: {message}", file=sys.stderr))
    result = launch(plan, args.argv, device)
    if result.message is None:
        return result.exit_code
    if result.outcome == "finished":
        print(f"sftchat: {result.message}", file=sys.stderr)
        return result.exit_code
    if args.json:
        json_emitter()(make_event(result.outcome, message=result.message))
    error = "error: " if result.outcome == "failed" else ""
    print(f"sftchat: {error}{result.message}", file=sys.stderr)
    return result.exit_code
