"""Drive the real `sftchat` app in its own process on a pseudo-terminal, as a user would.

Pilot runs the app inside the test process, which cannot be killed with -9 or share a
workspace with a second app the way two terminals do. This runs `python -m sftchat.cli` on a
pty of a fixed size, sends it key bytes, and reads what it draws: `screen_text()` is
everything written so far with escape sequences removed, which is enough to wait for a line
such as "Saved example #3" to appear.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

from cli_helpers import cli_command

from sftchat.text import strip_control

# Key bytes as a terminal sends them.
ENTER = b"\r"
CTRL_S = b"\x13"
CTRL_T = b"\x14"
CTRL_B = b"\x02"
F7 = b"\x1b[18~"
KEY_PAUSE_S = 0.3


class PtyApp:
    """`sftchat --workspace WORKSPACE` on a pty; stop it with `kill()` or `close()`."""

    def __init__(self, workspace: Path, columns: int = 120, rows: int = 40) -> None:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns), LINES=str(rows))
        self.process = subprocess.Popen(
            cli_command(workspace),
            stdin=follower, stdout=follower, stderr=follower, env=env, start_new_session=True,
            # The pty becomes its controlling terminal, as a real one would be: if this test
            # process dies, closing the pty hangs the app up instead of leaving it running.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(follower)
        self._leader: int | None = leader
        self._output = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._leader, 65536)
            except OSError:  # the app exited and the pty closed
                return
            if not data:
                return
            with self._lock:
                self._output += data

    def screen_text(self) -> str:
        with self._lock:
            raw = bytes(self._output)
        return strip_control(raw.decode("utf-8", "replace"))

    def wait_for(self, pattern: str, timeout: float = 60.0, after: int = 0) -> re.Match:
        """Wait until `pattern` appears in what was drawn after character `after`."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.screen_text()[after:])
            if match:
                return match
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.screen_text()[-1500:]
                raise AssertionError(f"the app never showed {pattern!r} "
                                     f"(exit code {self.process.poll()}); last output:\n{tail}")
            time.sleep(0.05)

    def mark(self) -> int:
        """A position in the output: `wait_for(..., after=mark)` ignores what came before."""
        return len(self.screen_text())

    def send(self, *keys: bytes | str) -> None:
        """Write each key (or run of text) as its own burst, a short pause apart, the way
        a person types: text glued to an escape sequence in one read (F7 then "abc") is
        not reliably read as two keys by the app's input parser."""
        for index, key in enumerate(keys):
            if index:
                time.sleep(KEY_PAUSE_S)
            os.write(self._leader, key.encode("utf-8") if isinstance(key, str) else key)

    def wait_until_loaded(self, timeout: float = 120.0) -> None:
        self.wait_for(r"builtin \(", timeout)  # the status line names the loaded model

    def ask(self, question: str, timeout: float = 60.0) -> None:
        after = self.mark()
        self.send(question, ENTER)
        self.wait_for(r"\d+ tokens · [\d.]+ s", timeout, after)  # the answer's details line

    def save_last_answer(self, response: str, timeout: float = 30.0) -> int:
        """ctrl+s, replace the response, ctrl+s; return the id the confirmation showed."""
        self.send(CTRL_S)
        self.wait_for(r"fix it the way it should have been", timeout)
        after = self.mark()
        self.send(F7, response, CTRL_S)
        return int(self.wait_for(r"Saved example #(\d+)", timeout, after).group(1))

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs in the app."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        if self._leader is not None:  # `kill()` closes too: closing twice is harmless
            os.close(self._leader)
            self._leader = None
