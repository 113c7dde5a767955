"""Runs inside the lab worker under the product's own Python (copied there by bench/run.py): one
`gpuswarm-node status` with its parts timed, to show where its wall time goes. It runs what the
program's entry (gpuswarm_node.entry) runs for a plain `status`: its short path, without typer.

    /opt/gpuswarm-node/venv/bin/python profile_status.py OUT.jsonl gpuswarm-node status --config FILE

Nothing of the product is edited: two of its seams are wrapped at run time. `subprocess.run` (every
command the checks start goes through it) records argv, duration and the step it ran for, and
`engine.safe_check` (the status runner calls it once per step, possibly from several threads at
once) records when each step's check started and ended. Writes one JSON object to
OUT.jsonl: the seconds spent importing the entry, in the command's body, per step, per subprocess,
appended to OUT.json as one line per run. The product's own output goes to stdout and stderr as usual.
"""

import json
import os
import subprocess
import sys
import threading
import time

started = time.perf_counter()
out_path, sys.argv = sys.argv[1], sys.argv[2:]
calls: list[dict] = []
steps: list[dict] = []
current = threading.local()  # the step whose check this thread is running
_run = subprocess.run


def timed_run(*args, **kwargs):
    argv = args[0] if args else kwargs.get("args")
    t = time.perf_counter()
    try:
        return _run(*args, **kwargs)
    finally:
        calls.append({"argv": list(argv) if isinstance(argv, (list, tuple)) else str(argv),
                      "step": getattr(current, "step", None), "seconds": time.perf_counter() - t})


subprocess.run = timed_run

from gpuswarm_node import engine, entry  # noqa: E402

imported = time.perf_counter()
_safe_check = engine.safe_check


def timed_check(step, ctx):
    t = time.perf_counter()
    current.step = step.name
    try:
        return _safe_check(step, ctx)
    finally:
        current.step = None
        steps.append({"name": step.name, "start": t - imported, "end": time.perf_counter() - imported})


engine.safe_check = timed_check
code = 0
plain = entry.plain_status(sys.argv[1:])
if plain is None:
    sys.exit(f"profile_status.py: not a plain status command line: {sys.argv[1:]}")
code = entry._status(*plain)
if code is None:
    sys.exit("profile_status.py: the configuration warns or fails; run status itself to see why")
finished = time.perf_counter()
with open(out_path, "a") as f:
    f.write(json.dumps({"exit_code": code, "import_cli_seconds": imported - started,
                        "body_seconds": finished - imported, "steps": steps, "subprocesses": calls}) + "\n")
if os.environ.get("PROFILE_HARD_EXIT"):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
