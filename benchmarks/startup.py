"""Startup: time to the chat app's first paint, and `sftchat data list` on 10,000 examples.

First paint is measured from launching the process until the app, running headless, has
mounted and refreshed its chat screen (the model keeps loading in the background: that is
the point). `data list` is timed as a whole command, output to a pipe.

    python benchmarks/startup.py [--examples 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import machine  # noqa: E402

PAINT = """
import asyncio, sys
from sftchat.config import load_settings
from sftchat.tui.app import create_app
app = create_app(load_settings(workspace=sys.argv[1]))
async def main():
    async with app.run_test(size=(120, 40)) as pilot:
        painted = asyncio.Event()
        # Runs right after the screen's next refresh: the first paint.
        app.screen.call_after_refresh(painted.set)
        await painted.wait()
        print("painted", flush=True)
        app.exit()
asyncio.run(main())
"""

def time_to_paint(workspace: Path) -> float:
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", PAINT, str(workspace)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith("painted"):
            seconds = time.perf_counter() - started
            break
    else:
        raise RuntimeError("the app never painted")
    process.wait()
    return seconds


def time_dataset_screen(workspace: Path) -> float:
    """From pushing the dataset screen to its table showing the first page (in-process)."""
    import asyncio

    from textual.app import App
    from textual.widgets import DataTable

    from sftchat.tui.screens.dataset import DatasetScreen

    async def measure() -> float:
        app = App()
        async with app.run_test(size=(120, 40)) as pilot:
            started = time.perf_counter()
            app.push_screen(DatasetScreen(workspace / "data"))
            while not (isinstance(app.screen, DatasetScreen)
                       and app.screen.query(DataTable)
                       and app.screen.query_one(DataTable).row_count):
                await pilot.pause(0.005)
            return time.perf_counter() - started

    return asyncio.run(measure())


def time_command(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sftchat.cli", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from sftchat.dataset.store import ExampleStore

    with tempfile.TemporaryDirectory() as folder:
        workspace = Path(folder)
        with ExampleStore(workspace / "data") as store:
            store.add_many((f"Instruction number {i}: explain item {i} in detail.", "",
                            f"Response {i}: " + "some words " * 20, None, "bench")
                           for i in range(args.examples))
        base = ["--workspace", str(workspace)]
        paint = [time_to_paint(workspace) for _ in range(args.repeats)]
        listing = [time_command([*base, "data", "list"]) for _ in range(args.repeats)]
        listing_json = [time_command([*base, "data", "list", "--json"])
                        for _ in range(args.repeats)]
        stats = [time_command([*base, "data", "stats"]) for _ in range(args.repeats)]
        export = [time_command([*base, "data", "export", str(workspace / "out.jsonl")])
                  for _ in range(args.repeats)]
        # The chat formats: export, then import into a fresh workspace (all or nothing, so
        # each import is one transaction of every example).
        chat_formats = {}
        for fmt in ("sharegpt", "messages"):
            exported = workspace / f"{fmt}.jsonl"
            exports = [time_command([*base, "data", "export", str(exported), "--format", fmt])
                       for _ in range(args.repeats)]
            imports = [time_command(["--workspace", str(workspace / f"import-{fmt}-{n}"),
                                     "data", "import", str(exported)])
                       for n in range(args.repeats)]
            chat_formats[f"data_export_{fmt}_s"] = round(statistics.median(exports), 3)
            chat_formats[f"data_import_{fmt}_s"] = round(statistics.median(imports), 3)
        screen = [time_dataset_screen(workspace) for _ in range(args.repeats)]
    result = {
        "command": " ".join(["python", "benchmarks/startup.py", *sys.argv[1:]]),
        "machine": machine(), "examples": args.examples,
        "first_paint_s": round(statistics.median(paint), 3),
        "data_list_s": round(statistics.median(listing), 3),
        "data_list_json_s": round(statistics.median(listing_json), 3),
        "data_stats_s": round(statistics.median(stats), 3),
        "data_export_s": round(statistics.median(export), 3),
        **chat_formats,
        "dataset_screen_open_s": round(statistics.median(screen), 3),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
