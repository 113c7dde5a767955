"""Runs inside the lab worker (copied there by bench/run.py): times commands with perf_counter
around a subprocess, so the host's nsenter never counts.

Reads one JSON object on stdin:
  {"runs": N, "warmup": W, "commands": [{"name", "argv", "env", "cwd", "prepare", "probe"}...]}
and runs the commands round-robin, W + N rounds, so that drift in the machine's speed (another
job on the host) hits every command alike. `prepare`, if given, is an argv run untimed before each
timed run (e.g. making a record old); `probe`, an argv run untimed after it, whose stdout is
recorded (e.g. docker's MainPID). Prints one JSON object:
  {name: [{"seconds", "rc", "stdout", "stderr", "probe", "max_rss_kib"}...]} for the N measured rounds.
max_rss_kib is the peak resident set of the command's process, or of one of the processes it waited
for if that was larger (wait4's ru_maxrss, Linux: KiB). Output goes to unlinked temp files, not
pipes, so that the wait is the process's own.
"""

import json
import os
import subprocess
import sys
import tempfile
import time


def run_one(command: dict) -> tuple[float, int, str, str, int]:
    """(seconds, exit status, stdout, stderr, peak RSS in KiB) of one run."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command["argv"], env=command.get("env"), cwd=command.get("cwd"),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return (seconds, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                usage.ru_maxrss)


def main() -> None:
    spec = json.load(sys.stdin)
    results = {c["name"]: [] for c in spec["commands"]}
    for round_no in range(spec.get("warmup", 0) + spec["runs"]):
        for command in spec["commands"]:
            if command.get("prepare"):
                subprocess.run(command["prepare"], check=True, capture_output=True)
            seconds, rc, stdout, stderr, max_rss = run_one(command)
            probe = None
            if command.get("probe"):
                probe = subprocess.run(command["probe"], capture_output=True, text=True).stdout.strip()
            if round_no >= spec.get("warmup", 0):
                results[command["name"]].append({
                    "seconds": seconds, "rc": rc, "stdout": stdout[-20000:],
                    "stderr": stderr[-5000:], "probe": probe, "max_rss_kib": max_rss,
                })
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
