"""hub-gate: the gate is where `hub authorize` and `hub bundle` name it, in each worker key's forced
command (`command="/usr/local/bin/gpuswarm-node hub gate --node NAME"`): setup.sh's link, which
stays across upgrades, and something only root can change (sshd runs it for every worker's key)."""

from __future__ import annotations

import os

from .. import facts as F
from ..context import Context
from ..engine import Check, PlannedFile, blocked, ok
from .boot import INSTALLING_ENV, PROGRAM


class HubGateStep:
    name = "hub-gate"
    description = f"the gate workers' keys are forced to run is installed ({PROGRAM})"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []

    def check(self, ctx: Context) -> Check:
        if not ctx.fact(F.EXISTS, PROGRAM):
            if os.environ.get(INSTALLING_ENV):  # setup.sh's dry run: its real run links the tool there first
                return ok(f"setup.sh links {PROGRAM} before hub init runs; hub authorize names it in each worker's "
                          "forced command")
            return blocked(f"{PROGRAM} is missing, and hub authorize and hub bundle name it in each worker key's "
                           "forced command: install the tool with setup.sh (`sudo ./setup.sh hub init` does), then run "
                           "hub init again")
        problem = ctx.fact(F.TRUSTED_PATH_PROBLEM, PROGRAM)
        if problem:
            return blocked(f"{problem}, so whoever can change it would answer every worker's SSH requests with the "
                           "manager's Docker: make it and the directories above it root's and writable by root alone "
                           "(or reinstall with setup.sh under a root-owned prefix), then run hub init again")
        return ok(f"{PROGRAM} is root's alone; hub authorize and hub bundle name it in each worker key's forced command")
