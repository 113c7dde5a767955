"""Commands with a time bound that holds even when the kernel does not answer.

A hard NFS mount (the shared filesystem's, steps/shared_fs.py) whose server is gone blocks every
stat(2), statfs(2), open(2) or readdir of a path on it in the kernel, in D state, until the server
answers again: for ever. Nothing in the blocked process can give up:

- a thread does not bound it: Python cannot stop a thread in a system call, and a process whose
  thread sits in an uninterruptible sleep cannot finish exiting (the kernel reports a thread
  group's exit only when its last thread is gone), so `status` would print and then never return
  to its shell;
- `timeout(1)` and `subprocess.run(timeout=)` signal the child and then wait for it: a child in an
  uninterruptible sleep (an NFS wait that is not TASK_KILLABLE, an inode lock held by another hung
  task) is not gone after SIGKILL, and the wait blocks.

So every read that may touch a share runs in a child process in a session of its own, with its
own pipes (never our stdout, which a caller may be reading to its end), and when it has not
answered in time it is killed and, if it is still there a moment later, abandoned: not waited for.
The kernel reaps it whenever the server answers (it is on subprocess's list of children to reap,
or init's once we are gone). A child left behind costs a process slot, never the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Mapping, Sequence

from .host import CommandResult

# How long a killed child may take to go before it is abandoned.
KILL_GRACE = 0.5


def call(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
    """Run `argv`, its output captured as text, for at most `timeout` seconds (plus KILL_GRACE).

    Returns its CommandResult; 127 when the program is missing; 124 with stderr "did not answer
    within N s" when it ran out of time (killed, and abandoned when the kill did not take)."""
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(env) if env is not None else None, start_new_session=True)
    except FileNotFoundError:
        return CommandResult(tuple(argv), 127, "", f"{argv[0]}: not found")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _give_up(proc)
        return CommandResult(tuple(argv), 124, "", f"{argv[0]}: did not answer within {timeout:g} s")
    return CommandResult(tuple(argv), proc.returncode, out, err)


def _give_up(proc: subprocess.Popen) -> None:
    """Kill `proc` and its session; wait KILL_GRACE for it, then abandon it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        # Still there: in an uninterruptible sleep. Our ends of its pipes are closed (it may never
        # close its own); Popen reaps it later without blocking (subprocess._cleanup).
        pass
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass
