"""UI latency at size (issue 20, item 7): the chat app's event-loop lag through a whole session
on a 5,000-example workspace, and its resident memory over ten adapter reviews.

What is measured, in one process, on the real app (`create_app`, the real engine and the real
trainer subprocess), headless under Pilot (`app.run_test`):

1. **import**: a fresh workspace; `sftchat data import FILE` through the real CLI (a
   subprocess), timed. FILE holds the first `--examples` records of the Alpaca file that the
   importer accepts (it refuses a whole file for one record with an empty output, and
   `alpaca_5000.json` has two: 4,998 records are imported at "all").
2. **the session**, as a user drives it, typing keys: *open* (app start until the model has
   loaded and the status line names it), *search* (F2, "/", type "water" a key at a time, wait
   for the matches and their count, erase it a key at a time, back to the chat), *train*
   (`/train --max-steps 20` typed in the chat; while it trains, a question is asked and
   answered), *review + accept* (the run's end: its adapter is replayed against the model
   answering, the review screen opens, `a`), *chat after accept* (one question), then
   *`--reviews` runs* (each a real `/train --max-steps 1` run whose review opens, accepted and
   rejected in turn). Every review follows a real run, as a user gets them: each new adapter
   is loaded (and a rejected one unloaded) by the app's own code, which is what the memory
   figures should include.

Event-loop lag: a probe coroutine on the app's loop sleeps 5 ms in a loop and records how late
each wake-up is (actual − expected), under the phase current at the time; p50 / p99 / max per
phase and over all of it (goal: p99 ≤ 50 ms). When a wake-up is more than 50 ms late, a
watchdog thread samples the loop thread's stack (`sys._current_frames`) and every other
thread's innermost frame, so each spike comes with where the loop was, and the kernel's
counters for the loop thread say whether it was running, waiting for a CPU or blocked (on
the GIL, mostly); every garbage collection is timed (`gc.callbacks`). Resident memory (RSS
of this process, the app's; the trainer subprocess has exited by then) after opening, after
the first accept, after each review, at the end.

    python benchmarks/ui_latency.py [--data ../shared/data/alpaca_5000.json] [--examples N]
        [--reviews 10] [--max-steps 20] [--model builtin|PATH.gguf|ID] [--workspace DIR]
        [--out /tmp/ui_latency.md]

The Markdown tables are printed and written to `--out`. `--seconds S` runs the older
measurement instead (RESULTS.md §5: idle, then an answer streaming while a run trains).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ui_latency_helpers import (  # noqa: E402
    GcRecorder, LagProbe, StackWatchdog, lag_table, rss_mb, spike_report,
)

DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "alpaca_5000.json"
SIZE = (120, 40)
TICK = 0.005
# A person types a key every ~120 ms; typing faster than the screen reacts would measure a
# burst nobody produces, typing through `pilot.press` alone would not leave it time to react.
KEY_GAP_S = 0.12
SEARCH = "water"
QUESTION_WHILE_TRAINING = "Give three tips for staying healthy."
QUESTION_AFTER_ACCEPT = "What is the capital of France?"


class SessionFailed(RuntimeError):
    """The app did something other than what the session expects (a failed run, a timeout)."""


# ---------------------------------------------------------------------- the workspace

def importable_records(data: Path, limit: int | None) -> tuple[list[dict], int]:
    """The first `limit` records the importer accepts, and how many were skipped on the way:
    it refuses the whole file for one record with an empty instruction or output."""
    records = json.loads(data.read_text())
    kept, skipped = [], 0
    for record in records:
        if limit is not None and len(kept) >= limit:
            break
        if str(record.get("instruction", "")).strip() and str(record.get("output", "")).strip():
            kept.append(record)
        else:
            skipped += 1
    return kept, skipped


def import_dataset(workspace: Path, records: list[dict]) -> float:
    """`sftchat data import` of `records` into `workspace`, through the CLI; its wall time."""
    with tempfile.TemporaryDirectory(prefix="sftchat-ui-data-") as folder:
        path = Path(folder) / "alpaca.json"
        path.write_text(json.dumps(records))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "sftchat.cli", "--workspace",
                               str(workspace), "data", "import", str(path), "--format",
                               "alpaca"], capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SessionFailed(f"sftchat data import failed: {done.stderr.strip()}")
    return seconds


# ---------------------------------------------------------------------- driving the app

async def wait_until(pilot, predicate, what: str, timeout: float) -> float:
    """Let the app run until `predicate()` holds (polling, never sleeping blind); the
    seconds it took. A model that failed to load ends the session at once."""
    started = time.perf_counter()
    while not predicate():
        status = pilot.app.get_screen("chat").query_one("#status")
        if str(status.model).startswith("model failed"):
            raise SessionFailed(f"the model failed to load while waiting for {what}: "
                                + " | ".join(notices(pilot.app)[-3:]))
        if time.perf_counter() - started > timeout:
            raise SessionFailed(f"timed out after {timeout:.0f} s waiting for {what}; the "
                                "chat's last notices: " + " | ".join(notices(pilot.app)[-3:]))
        await pilot.pause(0.05)
    return time.perf_counter() - started


def notices(app) -> list[str]:
    return [str(notice.render()) for notice in app.get_screen("chat").query(".notice")]


def screen_name(app) -> str:
    # By class name: survives the screens moving between modules.
    return type(app.screen).__name__


async def type_keys(pilot, text: str, screen: str | None = None) -> bool:
    """Type `text` a key at a time; stop (False) if another screen than `screen` comes to the
    front meanwhile: keys meant for the chat must not land on a review that just opened
    (its `a` and `r` decide it)."""
    for key in text:
        if screen is not None and screen_name(pilot.app) != screen:
            return False
        await pilot.press(key)
        await asyncio.sleep(KEY_GAP_S)
    return True


async def ask(pilot, question: str, timeout: float) -> float | None:
    """Type `question` in the chat, send it, wait for its answer to be complete; None if
    another screen (the review) opened while it was typed."""
    chat = pilot.app.get_screen("chat")
    before = len(chat.query(".assistant-message.done"))
    if not await type_keys(pilot, question, screen="ChatScreen"):
        chat.query_one("#prompt").clear()  # what was typed is not the next question's start
        return None
    await pilot.press("enter")
    return await wait_until(pilot, lambda: len(chat.query(".assistant-message.done")) > before,
                            "the answer", timeout)


def adapter_names(workspace: Path) -> set[str]:
    folder = workspace / "adapters"
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")} \
        if folder.is_dir() else set()


async def train(pilot, workspace: Path, options: str, timeout: float,
                question: str | None = None) -> dict:
    """`/train OPTIONS` typed in the chat; optionally ask `question` while it trains; wait
    for the run to end. The new adapter's name, and the run's timings."""
    app, before = pilot.app, adapter_names(workspace)
    status = app.get_screen("chat").query_one("#status")
    started = time.perf_counter()
    await type_keys(pilot, f"/train {options}")
    await pilot.press("enter")
    # 'starting…' until the trainer's `started` event (it loads the model and encodes the
    # dataset first); a run that fails before it goes back to 'idle'.
    await wait_until(pilot, lambda: str(status.training).startswith("step")
                     or not app.training, "the trainer's first step", timeout)
    first_step = time.perf_counter() - started
    answer = await ask(pilot, question, timeout) if question and app.training else None
    steps = ["no progress shown"]

    def ended() -> bool:
        if str(status.training).startswith("step"):
            steps[0] = str(status.training)  # the last progress shown: "step 20/20"
        return not app.training

    await wait_until(pilot, ended, "the run to end", timeout)
    new = sorted(adapter_names(workspace) - before)
    if len(new) != 1:
        raise SessionFailed(f"/train {options} published {new or 'nothing'}; the chat's last "
                            "notices: " + " | ".join(notices(app)[-3:]))
    return {"name": new[0], "to_first_step_s": first_step, "last_progress": steps[0],
            "run_s": time.perf_counter() - started, "answer_while_training_s": answer}


async def review(pilot, workspace: Path, name: str, decision: str, timeout: float) -> dict:
    """Wait for the review of `name` to open (the replay runs first), then press `a` or `r`
    and wait until the decision has taken effect (swapped in; or rejected and unloaded)."""
    app = pilot.app
    status = app.get_screen("chat").query_one("#status")
    opened = await wait_until(pilot, lambda: screen_name(app) == "ReviewScreen"
                              or recorded_decision(workspace, name) != "?",
                              f"the review of {name}", timeout)
    if screen_name(app) != "ReviewScreen":
        raise SessionFailed(f"the review of {name} was decided "
                            f"({recorded_decision(workspace, name)}) before it was seen: a key "
                            "typed for the chat reached it")
    # A user reads the review before deciding (and the screen refuses a key typed straight
    # after it opens, taken for typing).
    from sftchat.tui.screens.review import DECISION_PAUSE_S

    await asyncio.sleep(DECISION_PAUSE_S + 0.1)
    started = time.perf_counter()
    await pilot.press("a" if decision == "accept" else "r")
    await wait_until(pilot, lambda: screen_name(app) != "ReviewScreen", "the review to close",
                     timeout)
    if decision == "accept":
        await wait_until(pilot, lambda: status.adapter == name, f"{name} swapped in", timeout)
    # The dismissal's callback starts the swap, or the unload of a rejected adapter, in a
    # thread worker: let it run (the app idle once), then wait for every worker to finish,
    # so that memory is read after it.
    await pilot.pause()
    await asyncio.wait_for(app.workers.wait_for_complete(), timeout)
    return {"to_review_s": opened, "decision_s": time.perf_counter() - started,
            "recorded": recorded_decision(workspace, name)}


def recorded_decision(workspace: Path, name: str) -> str:
    """The decision the app wrote beside the adapter ("accepted", "rejected"; "?" if none)."""
    try:
        return json.loads((workspace / "adapters" / name / "decision.json").read_text())[
            "status"]
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


async def search(pilot, timeout: float) -> dict:
    """The dataset screen: type SEARCH a key at a time, wait for the matching rows and their
    count, erase it a key at a time, wait for the whole dataset again, back to the chat."""
    app = pilot.app

    def page() -> str:
        if screen_name(app) != "DatasetScreen":
            return ""
        return str(app.screen.query_one("#dataset-page").render())

    # Timed from before the key: `pilot.press` returns once the app is idle again.
    started = time.perf_counter()
    await pilot.press("f2")
    await wait_until(pilot, lambda: page().startswith("rows"), "the dataset's first page",
                     timeout)
    opened = time.perf_counter() - started
    await pilot.press("slash")
    await type_keys(pilot, SEARCH[:-1])
    typed = time.perf_counter()
    await pilot.press(SEARCH[-1])
    # "rows 1–37 of 37 matching “water” (…)": the count is '…' until its worker answers.
    await wait_until(pilot, lambda: f"matching “{SEARCH}”" in page()
                     and " of …" not in page(), "the search results", timeout)
    results = time.perf_counter() - typed
    rows = page()
    for _ in SEARCH:
        await pilot.press("backspace")
        await asyncio.sleep(KEY_GAP_S)
    await wait_until(pilot, lambda: page().startswith("rows") and "matching" not in page(),
                     "the whole dataset again", timeout)
    await pilot.press("escape")
    if screen_name(app) == "DatasetScreen":
        await pilot.press("escape")  # the first one may only have left the search box
    await wait_until(pilot, lambda: screen_name(app) == "ChatScreen", "the chat", timeout)
    return {"open_dataset_s": opened, "results_after_last_key_s": results, "shown": rows,
            "total_s": time.perf_counter() - started}


async def session(args, workspace: Path) -> dict:
    from sftchat.config import load_settings
    from sftchat.tui.app import create_app

    settings = load_settings(workspace=str(workspace), model=args.model)
    app = create_app(settings)
    probe = LagProbe(tick=TICK)
    watchdog = StackWatchdog(probe, threshold=0.05)
    timings: dict = {}
    memory: list[tuple[str, float]] = []
    phases = ["open", "search", "train + chat", "review + accept", "chat after accept"]
    if args.reviews:
        phases += [f"{args.reviews} runs: training", f"{args.reviews} runs: review + decide"]
    load = [os.getloadavg()[0]]
    probe.start()
    probe.enter("open")
    watchdog.start()
    started = time.perf_counter()
    try:
        with GcRecorder(probe) as collections:
            await drive(app, args, workspace, probe, phases, timings, memory)
        await probe.stop()
        load.append(os.getloadavg()[0])
    finally:
        watchdog.stop()
    timings["session_s"] = time.perf_counter() - started
    return {"lag": probe.summary(phases), "memory": memory, "timings": timings,
            "spikes": spike_report(probe, collections), "load": load,
            "gc": collections.table(phases)}


async def drive(app, args, workspace: Path, probe: LagProbe, phases: list[str],
                timings: dict, memory: list) -> None:
    """The session itself, a phase at a time (see the module docstring)."""
    started = time.perf_counter()
    async with app.run_test(size=SIZE) as pilot:
        status = app.get_screen("chat").query_one("#status")
        await wait_until(pilot, lambda: not str(status.model).startswith("loading"),
                         "the model to load", args.timeout)
        timings["open_s"] = time.perf_counter() - started
        memory.append(("after opening", rss_mb()))

        probe.enter("search")
        timings["search"] = await search(pilot, args.timeout)

        probe.enter("train + chat")
        run = await train(pilot, workspace, f"--max-steps {args.max_steps}", args.timeout,
                          question=QUESTION_WHILE_TRAINING)
        timings["train"] = run
        probe.enter("review + accept")
        timings["review"] = await review(pilot, workspace, run["name"], "accept",
                                         args.timeout)
        memory.append(("after the first accept", rss_mb()))

        probe.enter("chat after accept")
        timings["chat_after_accept_s"] = await ask(pilot, QUESTION_AFTER_ACCEPT,
                                                   args.timeout)
        if timings["chat_after_accept_s"] is None:
            raise SessionFailed(f"{screen_name(app)} came to the front during the question")

        timings["runs"] = []
        for number in range(args.reviews):
            decision = "accept" if number % 2 == 0 else "reject"
            probe.enter(phases[-2])
            run = await train(pilot, workspace, "--max-steps 1", args.timeout)
            probe.enter(phases[-1])
            run.update(await review(pilot, workspace, run["name"], decision,
                                    args.timeout), decision=decision)
            timings["runs"].append(run)
            memory.append((f"review {number + 1} ({decision}; decision.json: "
                           f"{run['recorded']})", rss_mb()))
            print(f"review {number + 1}/{args.reviews}: {decision} (recorded: "
                  f"{run['recorded']}), RSS {memory[-1][1]:,.0f} MiB", file=sys.stderr)
        memory.append(("end", rss_mb()))


# ---------------------------------------------------------------------- the report

def report(args, result: dict, command: str) -> str:
    from measure import machine

    t = result["timings"]
    lines = [f"UI latency at size: {result['examples']:,} examples, model `{args.model}`",
             "", "```", command, "```", "", f"Machine: {machine()}. Date: "
             f"{time.strftime('%Y-%m-%d')}. Load average (1 min) at the start and the end: "
             + " / ".join(f"{value:.1f}" for value in result["load"]) + ".", "",
             f"`sftchat data import` ({result['examples']:,} records"
             + (f"; {result['skipped']} with an empty output skipped" if result["skipped"]
                else "") + f"): **{result['import_s']:.2f} s**.", "",
             "Event-loop lag (a 5 ms probe on the app's loop: how late each wake-up is):", "",
             lag_table(result["lag"]), ""]
    overall = result["lag"][-1]["p99_ms"]
    lines += [f"Goal p99 ≤ 50 ms through all of it: **{overall:,.1f} ms, "
              f"{'met' if overall <= 50 else 'not met'}**.", ""]
    search = t["search"]
    train = t["train"]
    lines += [
        "| what | seconds |", "|---|---|",
        f"| open: app start → model loaded | {t['open_s']:.1f} |",
        f"| dataset screen: F2 → first page | {search['open_dataset_s']:.2f} |",
        f"| search: last key → matches counted ({search['shown']}) | "
        f"{search['results_after_last_key_s']:.2f} |",
        f"| `/train --max-steps {args.max_steps}`: enter → first step | "
        f"{train['to_first_step_s']:.1f} |",
        f"| … enter → run ended ({train['last_progress']}) | {train['run_s']:.1f} |",
        f"| … answer asked while it trained | {_s(train['answer_while_training_s'])} |",
        f"| run ended → review open (the replay) | {t['review']['to_review_s']:.1f} |",
        f"| accept → swapped in | {t['review']['decision_s']:.2f} |",
        f"| answer after accept | {t['chat_after_accept_s']:.1f} |",
    ]
    runs = t["runs"]
    if runs:
        lines += [f"| `--max-steps 1` run (median of {len(runs)}) | "
                  f"{statistics.median([r['run_s'] for r in runs]):.1f} |",
                  f"| its review: run ended → review open (median) | "
                  f"{statistics.median([r['to_review_s'] for r in runs]):.1f} |"]
    lines += [f"| whole session | {t['session_s']:.1f} |", "",
              "Resident memory of the app's process:", "", "| after | RSS |", "|---|---|"]
    lines += [f"| {label} | {mb:,.0f} MiB |" for label, mb in result["memory"]]
    reviews = [mb for label, mb in result["memory"] if label.startswith("review ")]
    if len(reviews) >= 2:
        lines += ["", f"Growth over the {len(reviews)} reviews (first → last): "
                  f"**{reviews[-1] - reviews[0]:+,.0f} MiB** "
                  f"({(reviews[-1] - reviews[0]) / (len(reviews) - 1):+,.1f} MiB a review); "
                  f"since opening: {result['memory'][-1][1] - result['memory'][0][1]:+,.0f} MiB."]
    lines += ["", "Garbage collections (each holds the GIL: no Python runs in any thread "
              "meanwhile):", "", result["gc"], "", result["spikes"]]
    return "\n".join(lines) + "\n"


def _s(value: float | None) -> str:
    return "– (the run ended first)" if value is None else f"{value:.1f}"



# ---------------------------------------------------------------------- §5: busy soak

async def soak(seconds: float) -> dict:
    """RESULTS.md §5: idle, then an answer streaming while a run trains (10 ms probe)."""
    from sftchat.config import load_settings
    from sftchat.dataset.store import ExampleStore
    from sftchat.tui.app import create_app

    workspace = Path(tempfile.mkdtemp(prefix="sftchat-ui-"))
    (workspace / "sftchat.toml").write_text(
        "[generation]\nmax_new_tokens = 100000\ntemperature = 1.0\n"
        "[training]\nepochs = 100000\n")
    with ExampleStore(workspace / "data") as store:
        for number in range(12):
            store.add(f"Question number {number}?", f"Answer number {number}.")
    app = create_app(load_settings(workspace=str(workspace)))
    probe = LagProbe(tick=0.01)
    async with app.run_test(size=SIZE) as pilot:
        chat = app.get_screen("chat")
        while app.engine is None:
            await pilot.pause(0.1)
        probe.start()
        probe.enter("idle")
        await asyncio.sleep(seconds / 2)
        probe.enter("starting")
        chat.query_one("#prompt").text = "Tell me a very long story."
        await pilot.press("enter")
        await pilot.press("ctrl+t")
        status = chat.query_one("#status")
        while not status.training.startswith("step"):
            await pilot.pause(0.1)
        probe.enter("generating + training")
        started, steps_before, answers = time.perf_counter(), status.training, 1
        # Keep an answer streaming for the whole window: ask again whenever one ends.
        while time.perf_counter() - started < seconds:
            if not chat.generating:
                chat.query_one("#prompt").text = f"Tell me another story ({answers})."
                await pilot.press("enter")
                answers += 1
            await asyncio.sleep(0.05)
        await probe.stop()
        chat.action_stop()
        app.cancel_training()
        rows = probe.summary(["idle", "generating + training"])
        result = {"lag": [{key: round(value, 2) if isinstance(value, float) else value
                           for key, value in row.items()} for row in rows],
                  "answers_started": answers,
                  "training_progress": f"{steps_before} -> {status.training}"}
        while app.trainer is not None:
            await pilot.pause(0.1)
    shutil.rmtree(workspace, ignore_errors=True)
    return result


# ---------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="Alpaca JSON file (default ../shared/data/alpaca_5000.json)")
    parser.add_argument("--examples", type=int, default=None,
                        help="import the first N importable records (default: all)")
    parser.add_argument("--reviews", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--model", default="builtin",
                        help="builtin (default), a .gguf file, a folder or a hub id")
    parser.add_argument("--workspace", type=Path,
                        help="a new or empty folder (default: a temporary one, deleted after)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="longest wait for any one step of the session, in seconds")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ui_latency.md"))
    parser.add_argument("--seconds", type=float,
                        help="run RESULTS.md §5's measurement instead (idle, then generating "
                             "+ training for this long) and print it as JSON")
    args = parser.parse_args()
    command = " ".join(["python", "benchmarks/ui_latency.py", *sys.argv[1:]])
    if args.seconds is not None:
        print(json.dumps(asyncio.run(soak(args.seconds)), indent=1))
        return

    if args.workspace is not None and args.workspace.exists() \
            and any(args.workspace.iterdir()):
        parser.error(f"--workspace {args.workspace} is not empty: give a new folder")
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="sftchat-ui-"))
    workspace.mkdir(parents=True, exist_ok=True)
    try:
        records, skipped = importable_records(args.data, args.examples)
        import_s = import_dataset(workspace, records)
        result = asyncio.run(session(args, workspace))
    finally:
        if args.workspace is None:
            shutil.rmtree(workspace, ignore_errors=True)
    result.update(examples=len(records), skipped=skipped, import_s=import_s)
    text = report(args, result, command)
    print(text)
    args.out.write_text(text)
    print(f"(written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
