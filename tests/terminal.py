"""mlwf in a real pseudo-terminal, read back through a terminal emulator (pyte).

Shared by the output tests (tests/test_output.py) and the README's pictures
(scripts/pictures.py), so the pictures show what the tests check.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
import time
from dataclasses import dataclass

import pyte

from conftest import MLWF, Stack, read_until, sigint_as_from_a_terminal


@dataclass
class Shown:
    code: int
    shown: bytes  # every byte the terminal received
    before_interrupt: bytes  # what it had received when SIGINT was sent (all of it if none was)


def in_terminal(stack: Stack, *args: str, cols: int = 80, rows: int = 24, env: dict | None = None,
                timeout: float = 300, interrupt_on: bytes | None = None) -> Shown:
    """Run `mlwf ARGS` in the stack's project with a pseudo-terminal of cols x rows as stdin, stdout
    and stderr, until it exits. With `interrupt_on`, send SIGINT (Ctrl-C) once the terminal has
    shown those bytes. Every wait is bounded by `timeout`."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    full_env = {**stack.env, "COLUMNS": str(cols), "LINES": str(rows), "TERM": "xterm-256color", **(env or {})}
    process = subprocess.Popen([MLWF, *args], stdin=slave, stdout=slave, stderr=slave, cwd=stack.project,
                               env=full_env, start_new_session=True, preexec_fn=sigint_as_from_a_terminal)
    os.close(slave)
    deadline = time.monotonic() + timeout
    try:
        shown = read_until(master, interrupt_on or b"\0never", deadline)
        before = shown
        if interrupt_on is not None:
            assert interrupt_on in shown, shown.decode(errors="replace")
            process.send_signal(signal.SIGINT)
            shown += read_until(master, b"\0never", deadline)  # until the child closes the terminal
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return Shown(code, shown, before)


def screen_of(shown: bytes, cols: int = 80, rows: int = 24, *, typed: str = "") -> pyte.HistoryScreen:
    """The screen after `shown`, with lines scrolled off the top in `.history.top`; `typed` is the
    command line the user typed first (it counts against the rows, as on a real terminal)."""
    screen = pyte.HistoryScreen(cols, rows, history=10_000)
    stream = pyte.ByteStream(screen)
    if typed:
        stream.feed(f"$ {typed}\r\n".encode())
    stream.feed(shown)
    return screen
