"""The one way tests run the real `sftchat` command line: a subprocess in a clean
environment (no SFTCHAT_* settings from the machine), and the one-line error contract
(GUIDE §3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SFTCHAT_ENV = ("SFTCHAT_MODEL", "SFTCHAT_HOME", "SFTCHAT_DEVICE", "SFTCHAT_NO_QUANTIZE",
               "SFTCHAT_TEMPLATE", "SFTCHAT_TRUST_REMOTE_CODE")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment minus sftchat settings; unbuffered, so that a line a child
    prints reaches a reading test at once."""
    env = {k: v for k, v in os.environ.items() if k not in SFTCHAT_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cli_command(workspace: Path | None, *args: str, python: str = sys.executable) -> list[str]:
    """The argv of `sftchat [--workspace W] ARGS`, for a test that starts it itself (to signal
    it, or on a pseudo-terminal)."""
    command = [python, "-m", "sftchat.cli"]
    if workspace is not None:
        command += ["--workspace", str(workspace)]
    return command + list(args)


def sftchat(workspace: Path | None, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300,
            check: bool = False, python: str = sys.executable,
            in_process: bool = False) -> subprocess.CompletedProcess:
    """Run `sftchat [--workspace W] ARGS` to completion; `check` fails the test on an error.

    `in_process`: the same command line (`sftchat.cli.main`) in this process, its stdout and
    stderr captured — no interpreter start and no second import of PyTorch (about 10 s each
    on a 2-core machine). For tests of what a command does once its path through a real
    process is covered elsewhere; not for signals, terminals, crashes or `env`/`cwd`."""
    if in_process:
        assert env is None and cwd is None and python == sys.executable, \
            "env, cwd and another Python need a real process"
        result = _run_in_process(cli_command(workspace, *args)[3:], stdin)
    else:
        result = subprocess.run(cli_command(workspace, *args, python=python), input=stdin,
                                capture_output=True, text=True, encoding="utf-8",
                                env=env or clean_env(), cwd=cwd, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"sftchat {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stderr}")
    return result


def _run_in_process(argv: list[str], stdin: str | None) -> subprocess.CompletedProcess:
    import contextlib
    import io

    from sftchat.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_stdin, sys.stdin = sys.stdin, io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse: usage errors and --help
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sftchat: error: "), lines[0]
    assert "this is a bug" not in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
