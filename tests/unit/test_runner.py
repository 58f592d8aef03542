"""The trainer runner's protocol: exactly one terminal event, marked with whether training
started, and a made-up `failed` event when the process dies without one.

The child processes here are tiny Python scripts that print events the way `train --json`
does, so every path (refused at setup, killed after starting, exited silently) is exercised
in well under a second instead of through a real model.
"""

from __future__ import annotations

import json
import sys

from sftchat.training.runner import TrainerProcess

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
