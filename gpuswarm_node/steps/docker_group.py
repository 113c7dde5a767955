"""docker-group: the node's user may run docker without sudo (the docker group is root-equivalent)."""

from __future__ import annotations

from ..config import valid_user_name
from ..engine import Check, PlannedFile, blocked, needs_change, ok, run_command, skipped
from .. import facts as F
from ..context import Context
from ..journal import Undo, keep


class DockerGroupStep:
    name = "docker-group"
    description = "node.user is in the docker group"

    def files(self, ctx: Context) -> list[PlannedFile]:
        return []

    def check(self, ctx: Context) -> Check:
        user = ctx.config.node_user
        if not user:
            return skipped("no user to add: node.user is empty and the tool was not run through sudo")
        if user == "root":
            return skipped("root needs no docker group")
        if not valid_user_name(user):
            # node.user is validated with the configuration; $SUDO_USER is not.
            return blocked(f"SUDO_USER {user!r} is not a user name (a letter or '_', then letters, digits, '_' or "
                           "'-'); set node.user to the user to add")
        if not ctx.fact(F.USER_EXISTS, user):
            return blocked(f"user {user!r} does not exist; set node.user to an existing user")
        members = ctx.fact(F.GROUP_MEMBERS, "docker")
        if members is not None and user in members:
            return ok(f"{user} is in the docker group")
        actions = []
        if members is None:
            # The docker package creates the group too; creating it first lets this step come first.
            actions.append(run_command("groupadd", "--system", "--", "docker",
                                       undo=keep("group docker left in place (the docker package uses it)")))
        # "--": the user name is an operand, never an option.
        actions.append(run_command("usermod", "--append", "--groups", "docker", "--", user,
                                   undo=Undo("leave-group", user=user, group="docker")))
        reason = "the docker group does not exist yet" if members is None else f"{user} is not in the docker group"
        return needs_change(reason, *actions)
