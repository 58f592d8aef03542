"""The trainer runner's protocol: exactly one terminal event, marked with whether training
started, and a made-up `failed` event when the process dies without one.

The child processes here are tiny Python scripts that print events the way `train --json`
does, so every path (refused at setup, killed after starting, exited silently) is exercised
in well under a second instead of through a real model.
"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from sftchat.training.events import first_ids, make_event, truncation_notice
from sftchat.tui.trainer_process import TrainerProcess, read_lines

STARTED = json.dumps({"event": "started", "name": "x", "total_steps": 3})
FAILED = json.dumps({"event": "failed", "message": "another training run is using this "
                                                   "workspace"})


async def _run(script: str) -> tuple[int, list[dict]]:
    events: list[dict] = []
    trainer = TrainerProcess([sys.executable, "-c", script], events.append)
    code = await trainer.run()
    return code, events


async def test_a_refusal_at_setup_is_marked_as_not_started():
    code, events = await _run(f"print({FAILED!r}); raise SystemExit(1)")
    assert code == 1
    assert [(e["event"], e["started"]) for e in events] == [("failed", False)]
    assert events[0]["message"].startswith("another training run")


async def test_a_run_killed_after_starting_gets_one_failed_event_with_the_likely_cause():
    script = f"import os, signal; print({STARTED!r}, flush=True); os.kill(os.getpid(), 9)"
    code, events = await _run(script)
    assert code == -9
    assert [e["event"] for e in events] == ["started", "failed"]
    failed = events[-1]
    assert failed["started"] is True
    assert "killed by signal 9" in failed["message"]
    assert "smaller --batch-size" in failed["message"]  # SIGKILL from outside: likely OOM


async def test_a_silent_exit_reports_the_last_line_of_stderr_and_nothing_after_the_end():
    script = (f"import sys; print({FAILED!r}, flush=True); print({STARTED!r}, flush=True); "
              "sys.stderr.write('late noise\\n'); raise SystemExit(1)")
    _, events = await _run(script)
    assert [e["event"] for e in events] == ["failed"]  # nothing is delivered after the end

    _, events = await _run("import sys; sys.stderr.write('Segmentation fault\\n'); "
                           "raise SystemExit(139)")
    assert [e["event"] for e in events] == ["failed"]
    assert events[0]["message"] == ("the trainer exited with code 139: Segmentation fault; "
                                    "nothing was published")
    assert events[0]["started"] is False


# ----------------------------------------------------------------- a bounded protocol (issue 20)

FINISHED = json.dumps({"event": "finished", "name": "x", "steps": 3})


async def test_a_one_megabyte_line_is_skipped_and_the_run_still_ends_in_its_own_event():
    # asyncio's own line reader dies on a line over 64 KiB: the run never ended in the app.
    script = (f"import sys; print({STARTED!r}, flush=True); "
              "sys.stdout.write('{\"event\": \"step\", \"junk\": \"' + 'x' * 2**20 + '\"}\\n'); "
              f"print({FINISHED!r}, flush=True)")
    events: list[dict] = []
    trainer = TrainerProcess([sys.executable, "-c", script], events.append)
    assert await trainer.run() == 0
    assert [e["event"] for e in events] == ["started", "finished"]
    assert trainer.overlong_lines == 1


async def test_a_trainer_that_dies_mid_line_after_an_overlong_one_says_both():
    script = (f"import os, sys; print({STARTED!r}, flush=True); "
              "sys.stdout.write('y' * 2**20 + '\\n'); sys.stdout.write('{\"event\": \"st'); "
              "sys.stdout.flush(); sys.stderr.write('RuntimeError: boom\\n'); os._exit(3)")
    code, events = await _run(script)
    assert code == 3
    assert [e["event"] for e in events] == ["started", "failed"]
    assert events[-1]["message"].startswith("the trainer exited with code 3: RuntimeError: boom "
                                            "(it wrote 1 line(s) over 256 KiB")


async def test_a_failing_reader_kills_the_child_frees_it_and_ends_the_run():
    # The child would train for a minute; the app's callback breaks on the first event.
    script = f"import time; print({STARTED!r}, flush=True); time.sleep(60)"
    events: list[dict] = []

    def on_event(event: dict) -> None:
        events.append(event)
        if event["event"] == "started":
            raise RuntimeError("the panel broke")

    trainer = TrainerProcess([sys.executable, "-c", script], on_event)
    code = await asyncio.wait_for(trainer.run(), 30)
    # Stopped (SIGTERM: a real trainer deletes its staging and lock) and waited for.
    assert code == -15 and not trainer.running and trainer.cancel_requested
    assert [e["event"] for e in events] == ["started", "failed"]
    assert events[-1]["message"] == ("reading the trainer's output failed (RuntimeError: the "
                                     "panel broke); the trainer was stopped and nothing was "
                                     "published")


async def test_a_cancelled_reader_leaves_no_trainer_behind():
    trainer = TrainerProcess([sys.executable, "-c", "import time; time.sleep(60)"], [].append)
    task = asyncio.ensure_future(trainer.run())
    while trainer.process is None:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert trainer.cancel_requested   # SIGTERM: a real trainer cleans up and exits
    assert await asyncio.wait_for(trainer.process.wait(), 10) == -15


async def test_read_lines_bounds_every_line():
    reader = asyncio.StreamReader()
    reader.feed_data(b"short\n" + b"z" * 300 + b"\nnext\nlast without newline")
    reader.feed_eof()
    lines = [line async for line in read_lines(reader, limit=100)]
    assert lines == [b"short", None, b"next", b"last without newline"]


def test_a_started_event_names_a_few_ids_and_counts_them_all():
    skipped = list(range(1, 5001))
    event = make_event("started", skipped_too_long=first_ids(skipped),
                       skipped_count=len(skipped), max_length=64)
    assert len(json.dumps(event)) < 1024
    notice = truncation_notice(event)
    assert notice.startswith("skipped 5000 examples whose answer alone is longer than max "
                             "length 64 (ids 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, …)")
