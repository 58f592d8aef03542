"""Durability of the curated dataset under faults (issue 6, item 1).

Real processes, real SQLite files, real signals: a writer that printed an id is killed with
SIGKILL the next instant and the example must be there; several processes write at once and
nothing is lost or refused as "database is locked"; readers run during writes; a bulk import
killed midway leaves a readable store holding all of the file or none of it; the schema has a
version and an old (version 0) file is migrated when it is opened.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import clean_env, cli_command, sftchat

from sftchat.dataset.store import DB_NAME, SCHEMA_VERSION, ExampleStore



# The same call `sftchat data add` makes. The writer prints "ID INDEX" once `add` returned,
# i.e. once the example is acknowledged. With "wait" it opens the store only after a line on
# stdin (so several writers start together on a fresh store), and with a stop file it keeps
# writing past COUNT until that file exists (so its writes overlap whatever the test runs).
WRITER = r"""
import os, sys
from pathlib import Path
from sftchat.dataset.store import ExampleStore
data_dir, tag, count, mode, stop = sys.argv[1:6]
count = int(count)
if mode == "wait":
    print("ready", flush=True)
    sys.stdin.readline()
store = ExampleStore(Path(data_dir))
i = 0
while True:
    if count >= 0 and i >= count and (stop == "-" or os.path.exists(stop)):
        break
    example_id = store.add(f"instruction {tag} #{i}", f"réponse {tag} #{i} ✓", source="cli")
    print(example_id, i, flush=True)
    i += 1
store.close()
"""


def instruction_of(tag: str, index: int) -> str:
    return f"instruction {tag} #{index}"


def response_of(tag: str, index: int) -> str:
    return f"réponse {tag} #{index} ✓"


def start_writer(data_dir: Path, tag: str, count: int = -1, wait: bool = False,
                 stop: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data_dir), tag, str(count),
         "wait" if wait else "go", str(stop) if stop else "-"],
        stdin=subprocess.PIPE if wait else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, encoding="utf-8", env=clean_env())


def parse_acks(lines: list[str]) -> list[tuple[int, int]]:
    """(id, index) of every complete acknowledgement line."""
    acks = []
    for line in lines:
        if line.endswith("\n") and line.strip() and line.strip() != "ready":
            example_id, index = line.split()
            acks.append((int(example_id), int(index)))
    return acks


def integrity(db_path: Path) -> str:
    raw = sqlite3.connect(db_path)
    try:
        return raw.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        raw.close()


def raw_pragma(db_path: Path, name: str):
    raw = sqlite3.connect(db_path)
    try:
        return raw.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        raw.close()


def assert_acknowledged_examples_present(data_dir: Path, acks: dict[int, tuple[str, int]]):
    with ExampleStore(data_dir) as store:
        for example_id, (tag, index) in acks.items():
            example = store.get(example_id)  # raises ExampleNotFound if it was lost
            assert example.instruction == instruction_of(tag, index)
            assert example.response == response_of(tag, index)
    assert integrity(data_dir / DB_NAME) == "ok"


# --------------------------------------------------------------------------- kill -9


def test_acknowledged_examples_survive_sigkill_of_the_writer(ws):
    """Each round starts a writer on the same store and SIGKILLs it right after it has
    acknowledged N examples — mostly in the middle of its next transaction."""
    data_dir = ws / "data"
    acknowledged: dict[int, tuple[str, int]] = {}
    kill_after = [1, 9, 40, 3, 120]
    for round_number, n in enumerate(kill_after):
        tag = f"r{round_number}"
        writer = start_writer(data_dir, tag)
        lines = []
        try:
            while len(parse_acks(lines)) < n:
                line = writer.stdout.readline()
                assert line, f"writer ended early: {writer.wait()} {writer.stderr.read()}"
                lines.append(line)
            writer.send_signal(signal.SIGKILL)  # the next instant
        finally:
            if writer.poll() is None:
                writer.kill()
            rest, stderr = writer.communicate(timeout=60)
        assert writer.returncode == -signal.SIGKILL, stderr
        # Lines still in the pipe were acknowledged too (printed after a returned add).
        lines += rest.splitlines(keepends=True)
        for example_id, index in parse_acks(lines):
            assert example_id not in acknowledged, "an id was handed out twice"
            acknowledged[example_id] = (tag, index)
        assert_acknowledged_examples_present(data_dir, acknowledged)
    assert len(acknowledged) >= sum(kill_after)


def test_id_printed_by_cli_data_add_survives_sigkill_the_next_instant(ws):
    """The real command: read the id from its stdout and SIGKILL it at once."""
    acknowledged: dict[int, tuple[str, int]] = {}
    killed_alive = 0
    for index in range(8):
        process = subprocess.Popen(
            cli_command(ws, "data", "add", "--instruction", instruction_of("cli", index),
                        "--response", response_of("cli", index)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            env=clean_env())
        try:
            line = process.stdout.readline()
            if line.strip():
                process.send_signal(signal.SIGKILL)  # the next instant
        finally:
            rest, stderr = process.communicate(timeout=60)
        assert line.strip().isdigit(), f"no id printed: {line!r} {stderr}"
        assert process.returncode in (0, -signal.SIGKILL), stderr
        killed_alive += process.returncode == -signal.SIGKILL
        acknowledged[int(line)] = ("cli", index)
        assert_acknowledged_examples_present(ws / "data", acknowledged)
    # The id is printed before the store is closed, so some kills must land on a live process
    # (otherwise this test would not be testing a kill at all).
    assert killed_alive > 0
    listed = json.loads(sftchat(ws, "data", "list", "--json").stdout)
    assert {example["id"] for example in listed} == set(acknowledged)


# --------------------------------------------------------------------------- concurrency


def test_concurrent_writers_and_readers_lose_nothing_and_never_see_locked(tmp_path):
    """Three writer processes released at the same instant, a burst of `sftchat data add`
    processes and `data list --json` / `data stats --json` readers, all at the same time."""
    ws = tmp_path / "ws"
    data_dir = ws / "data"
    # An existing store; creating one from several processes at once is tested below.
    ExampleStore(data_dir).close()
    stop = tmp_path / "stop-writers"
    writers = [start_writer(data_dir, f"w{n}", count=200, wait=True, stop=stop)
               for n in range(3)]
    writer_lines: list[list[str]] = [[] for _ in writers]
    writer_errors: list[list[str]] = [[] for _ in writers]
    drains: list[threading.Thread] = []
    try:
        for writer in writers:
            assert writer.stdout.readline() == "ready\n", writer.stderr.read()
        # Keep the pipes drained, or a writer would block on a full pipe instead of writing.
        for writer, lines, errors in zip(writers, writer_lines, writer_errors):
            drains += [threading.Thread(target=lambda f=writer.stdout, l=lines: l.extend(f)),
                       threading.Thread(target=lambda f=writer.stderr, l=errors: l.extend(f))]
        for thread in drains:
            thread.start()
        for writer in writers:  # go, all at once
            writer.stdin.write("go\n")
            writer.stdin.flush()

        # Let every writer get going before the CLI joins in (bounded poll, no fixed sleep).
        deadline = time.monotonic() + 60
        while not all(parse_acks(list(lines)) for lines in writer_lines):
            assert time.monotonic() < deadline, f"a writer never wrote: {writer_errors}"
            assert all(writer.poll() is None for writer in writers), writer_errors
            time.sleep(0.01)

        cli_results: list[tuple[int, subprocess.CompletedProcess]] = []
        reader_results: list[tuple[str, subprocess.CompletedProcess]] = []

        def cli_burst() -> None:
            for index in range(6):
                cli_results.append((index, sftchat(ws, "data", "add",
                                               "--instruction", instruction_of("cli", index),
                                               "--response", response_of("cli", index))))

        def readers() -> None:
            for _ in range(3):
                reader_results.append(("list", sftchat(ws, "data", "list", "--json")))
                reader_results.append(("stats", sftchat(ws, "data", "stats", "--json")))
                reader_results.append(("stats-text", sftchat(ws, "data", "stats")))

        threads = [threading.Thread(target=cli_burst), threading.Thread(target=readers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        # The writers were writing all along: they only stop once this file exists.
        still_running = [writer.poll() is None for writer in writers]
        stop.touch()
        for writer in writers:
            writer.wait(timeout=120)
        for thread in drains:
            thread.join(timeout=60)
    finally:
        stop.touch()
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()

    assert all(still_running), "a writer finished before the CLI and the readers did"
    acknowledged: dict[int, tuple[str, int]] = {}
    for n, (writer, lines, errors) in enumerate(zip(writers, writer_lines, writer_errors)):
        stderr = "".join(errors)
        assert writer.returncode == 0, stderr
        assert "locked" not in stderr.lower(), stderr
        acks = parse_acks(lines)
        assert [index for _, index in acks] == list(range(len(acks)))
        assert len(acks) >= 200
        for example_id, index in acks:
            assert example_id not in acknowledged, f"id {example_id} handed out twice"
            acknowledged[example_id] = (f"w{n}", index)
    writer_ids = set(acknowledged)
    assert len(cli_results) == 6
    for index, result in cli_results:
        assert result.returncode == 0, result.stderr
        assert "locked" not in result.stderr.lower(), result.stderr
        example_id = int(result.stdout)
        assert example_id not in acknowledged, f"id {example_id} handed out twice"
        acknowledged[example_id] = ("cli", index)
    cli_ids = set(acknowledged) - writer_ids
    # The CLI really wrote in between the writers' examples.
    assert min(writer_ids) < min(cli_ids) and max(cli_ids) < max(writer_ids)

    assert len(reader_results) == 9
    counts = []
    for kind, result in reader_results:
        assert result.returncode == 0, result.stderr
        assert "locked" not in result.stderr.lower(), result.stderr
        assert "Traceback" not in result.stderr
        if kind == "stats-text":
            (examples_line,) = [line for line in result.stdout.splitlines()
                                if line.split()[:1] == ["examples"]]
            assert int(examples_line.split()[1]) > 0
            continue
        payload = json.loads(result.stdout)
        if kind == "list":
            for example in payload:  # only whole, committed examples are ever seen
                tag, _, index = example["instruction"].removeprefix("instruction ").partition(
                    " #")
                assert example["response"] == response_of(tag, int(index))
            counts.append(len(payload))
        else:
            counts.append(payload["examples"])
    assert counts == sorted(counts), f"a reader saw the dataset shrink: {counts}"
    assert 0 < counts[-1] < len(acknowledged)

    with ExampleStore(data_dir) as store:
        assert store.count() == len(acknowledged)
        assert store.schema_version == SCHEMA_VERSION
    assert_acknowledged_examples_present(data_dir, acknowledged)


# --------------------------------------------------------------------------- bulk import


def _big_import_file(path: Path, count: int = 20_000) -> Path:
    # Records big enough (≈1 KB) that the import's transaction spills into the WAL while it
    # runs: a growing WAL is how the test knows the import is midway.
    records = [{"instruction": f"Instruction {i}: " + "lorem ipsum " * 40, "input": "",
                "output": f"Response {i}: " + "dolor sit amet " * 30} for i in range(count)]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_sigkill_during_bulk_import_leaves_a_readable_store_with_all_or_nothing(tmp_path):
    source = _big_import_file(tmp_path / "big.json")
    attempts = []
    for attempt in range(6):
        ws = tmp_path / f"ws{attempt}"
        ExampleStore(ws / "data").close()  # an existing, empty store (its WAL is gone)
        wal = ws / "data" / f"{DB_NAME}-wal"
        process = subprocess.Popen(
            cli_command(ws, "data", "import", str(source)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clean_env())
        try:
            # Wait until the rows are being written (the WAL passes 1 MB), then kill.
            while process.poll() is None:
                if wal.exists() and wal.stat().st_size > 1_000_000:
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)  # poll interval; leave the CPU to the import
        finally:
            process.wait(timeout=120)
            stderr = process.stderr.read()
            process.stderr.close()
        attempts.append(process.returncode)
        assert process.returncode in (0, -signal.SIGKILL), stderr
        if process.returncode == -signal.SIGKILL:
            break
    assert attempts[-1] == -signal.SIGKILL, f"never caught the import midway: {attempts}"

    db = ws / "data" / DB_NAME
    assert integrity(db) == "ok"
    stats = sftchat(ws, "data", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    count = json.loads(stats.stdout)["examples"]
    assert count in (0, 20_000)
    # The store is not only readable but usable: the same import now completes.
    again = sftchat(ws, "data", "import", str(source), timeout=300)
    assert again.returncode == 0, again.stderr
    with ExampleStore(ws / "data") as store:
        assert store.count() == count + 20_000
        last = list(store.iter_examples(offset=store.count() - 1))[0]
        assert last.instruction.startswith("Instruction 19999: ")
    assert integrity(db) == "ok"


# --------------------------------------------------------------------------- schema


def test_a_fresh_store_has_the_current_schema_version_and_wal_journal(ws):
    result = sftchat(ws, "data", "add", "--instruction", "hi", "--response", "hello")
    assert result.returncode == 0, result.stderr
    db = ws / "data" / DB_NAME
    assert SCHEMA_VERSION >= 1
    assert raw_pragma(db, "user_version") == SCHEMA_VERSION
    assert raw_pragma(db, "journal_mode") == "wal"
    stats = json.loads(sftchat(ws, "data", "stats", "--json").stdout)
    assert stats["schema_version"] == SCHEMA_VERSION


def _empty_sqlite_with_header(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE scratch (x)")
    raw.execute("DROP TABLE scratch")
    raw.commit()
    raw.close()
    assert raw_pragma(path, "user_version") == 0


@pytest.mark.parametrize("kind", ["zero-byte file", "sqlite file at version 0"])
@pytest.mark.parametrize("command", [["data", "list", "--json"],
                                     ["data", "add", "--instruction", "q", "--response", "a"]])
def test_a_version_0_database_is_migrated_when_opened(ws, kind, command):
    db = ws / "data" / DB_NAME
    db.parent.mkdir()
    if kind == "zero-byte file":
        db.write_bytes(b"")
    else:
        _empty_sqlite_with_header(db)
    result = sftchat(ws, *command)
    assert result.returncode == 0, result.stderr
    assert raw_pragma(db, "user_version") == SCHEMA_VERSION
    assert integrity(db) == "ok"
    with ExampleStore(ws / "data") as store:
        expected = 1 if command[1] == "add" else 0
        assert store.count() == expected


@pytest.mark.parametrize("kind", ["no database yet", "zero-byte file",
                                  "sqlite file at version 0"])
def test_processes_opening_a_new_store_at_once_create_and_migrate_it_without_locked(
        tmp_path, kind):
    """The app and the CLI (or two CLIs) started together on a new workspace: every one of
    them must open the store — never "database is locked" — and the schema is built once.
    A race, so several rounds of four processes released at the same instant."""
    for round_number in range(8):
        data_dir = tmp_path / f"round{round_number}" / "data"
        db = data_dir / DB_NAME
        if kind != "no database yet":
            data_dir.mkdir(parents=True)
            if kind == "zero-byte file":
                db.write_bytes(b"")
            else:
                _empty_sqlite_with_header(db)
        writers = [start_writer(data_dir, f"m{n}", count=25, wait=True) for n in range(4)]
        try:
            for writer in writers:
                assert writer.stdout.readline() == "ready\n", writer.stderr.read()
            for writer in writers:
                writer.stdin.write("go\n")
                writer.stdin.flush()
            outputs = [writer.communicate(timeout=120) for writer in writers]
        finally:
            for writer in writers:
                if writer.poll() is None:
                    writer.kill()
                    writer.wait()
        for writer, (_, stderr) in zip(writers, outputs):
            assert "locked" not in stderr.lower(), f"round {round_number}: {stderr}"
            assert writer.returncode == 0, f"round {round_number}: {stderr}"
        assert raw_pragma(db, "user_version") == SCHEMA_VERSION
        assert raw_pragma(db, "journal_mode") == "wal"
        with ExampleStore(data_dir) as store:
            assert store.count() == 100


def test_a_database_from_a_newer_sftchat_is_refused_and_left_untouched(ws):
    db = ws / "data" / DB_NAME
    with ExampleStore(ws / "data") as store:
        store.add("keep", "me")
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    before = db.read_bytes()
    result = sftchat(ws, "data", "list")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftchat: error: "), result.stderr
    assert "upgrade sftchat" in lines[0]
    assert db.read_bytes() == before
    assert raw_pragma(db, "user_version") == SCHEMA_VERSION + 1


def test_an_example_the_app_confirmed_survives_sigkill_of_the_app_the_next_instant(ws):
    """The real app on a terminal: ask, ctrl+s, correct the answer, ctrl+s; the moment the
    "Saved example #N" confirmation is drawn, the app gets SIGKILL. The example must be there,
    whole, with the model's original answer kept beside the correction."""
    from pty_app import PtyApp

    (ws / "sftchat.toml").write_text("[generation]\nmax_new_tokens = 24\ntemperature = 0.0\n")
    app = PtyApp(ws)
    try:
        app.wait_until_loaded()
        app.ask("What is the best editor?")
        example_id = app.save_last_answer("Use vim — ünïcode ✓.")
    finally:
        app.kill()
    assert integrity(ws / "data" / DB_NAME) == "ok"
    with ExampleStore(ws / "data") as store:
        example = store.get(example_id)
        assert (example.instruction, example.response) == ("What is the best editor?",
                                                           "Use vim — ünïcode ✓.")
        assert example.source == "chat" and example.original_response
