"""Runs inside the lab worker (copied there by bench/run.py): times commands with perf_counter
around a subprocess, so the host's nsenter never counts.

Reads one JSON object on stdin:
  {"runs": N, "warmup": W, "commands": [{"name", "argv", "env", "cwd", "probe"}...]}
and runs the commands round-robin, W + N rounds, so that drift in the machine's speed (another
job on the host) hits every command alike. `probe`, if given, is an argv run untimed after each
timed run; its stdout is recorded (e.g. docker's MainPID). Prints one JSON object:
  {name: [{"seconds", "rc", "stdout", "stderr", "probe"}...]} for the N measured rounds.
"""

import json
import subprocess
import sys
import time


def main() -> None:
    spec = json.load(sys.stdin)
    results = {c["name"]: [] for c in spec["commands"]}
    for round_no in range(spec.get("warmup", 0) + spec["runs"]):
        for command in spec["commands"]:
            started = time.perf_counter()
            proc = subprocess.run(command["argv"], env=command.get("env"), cwd=command.get("cwd"),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            probe = None
            if command.get("probe"):
                probe = subprocess.run(command["probe"], capture_output=True, text=True).stdout.strip()
            if round_no >= spec.get("warmup", 0):
                results[command["name"]].append({
                    "seconds": seconds, "rc": proc.returncode, "stdout": proc.stdout[-20000:],
                    "stderr": proc.stderr[-5000:], "probe": probe,
                })
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
