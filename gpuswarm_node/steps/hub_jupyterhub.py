"""hub-jupyterhub: JupyterHub as a Swarm service on this manager, with the configuration the
workers agree with (`hub-config`'s, for the notebook image hub init pushed), the authenticator
chosen in [hub], jupyterhub-idle-culler as a hub service, and TLS with the registry's certificate.

The service is created from flags the tool derives (no file of the operator's is copied): the
manager's Docker socket, the configuration directory (read-only), a volume for JupyterHub's
database and cookie secret, the certificate and key, and the authenticator's secret file
(read-only; its content is never in the configuration, a command line or the output). Its label
`org.gpuswarm-node.spec` is the SHA-256 of those flags, of the configuration's text and of the
certificate's fingerprint: when one changes, the service is created again (JupyterHub restarts;
the servers, services of their own, keep running). `ok` is judged by effect: JupyterHub answers its API over TLS.
"""

from __future__ import annotations

import hashlib
import json
import time

from .. import facts as F
from ..config import HUB_DIR
from ..context import Context
from ..engine import Call, Check, PlannedFile, blocked, needs_change, ok, run_command, skipped, write_wanted
from ..errors import StepFailed
from ..hub_init import hub_name, tls_paths
from ..journal import Undo
from ..render import render
from .hub_notebook import HubJupyterhubImageStep, HubNotebookImageStep

SERVICE = "jupyterhub"
CONFIG_DIR = f"{HUB_DIR}/jupyterhub-config"  # apart from the image's build context
CONFIG_FILE = f"{CONFIG_DIR}/jupyterhub_config.py"
DATA_VOLUME = "jupyterhub-data"
CONTAINER_PORT = 8000
SECRET_PATH = "/run/secrets/hub-auth"
SPEC_LABEL = "org.gpuswarm-node.spec"
START_WAIT = 600.0  # a first start pulls JupyterHub's image from the registry


def _service(result, _arg: str) -> dict | None:
    found = F.command_json(result)
    return found[0] if isinstance(found, list) and found and isinstance(found[0], dict) else None


# `docker service inspect NAME`'s object, or None when there is no such service.
SERVICE_INSPECT = F.fact("docker_service", F.COMMAND, lambda name: ["docker", "service", "inspect", "--", name],
                         _service)


def _hub_api(arg: str):
    def ask(_host) -> dict:
        import ssl
        import urllib.request

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # what answers is checked, not who: the certificate is hub-registry's
        try:
            with urllib.request.urlopen(f"https://{arg}/hub/api", timeout=10, context=context) as response:
                return {"version": str(json.loads(response.read(65536)).get("version", ""))}
        except (OSError, ValueError, ssl.SSLError) as exc:
            return {"problem": f"JupyterHub does not answer at https://{arg}/hub/api ({getattr(exc, 'reason', None) or exc})"}
    return ask


# What JupyterHub's API answers at "host:port": {"version": ...} or {"problem": why not}.
HUB_API = F.fact("hub_api", F.HOST, _hub_api)


def notebook_image(ctx: Context) -> str:
    """The image servers start: the one hub init builds, else the operator's image.name."""
    return HubNotebookImageStep().image(ctx) if ctx.config.hub.notebook_base else ctx.config.image.name


def config_text(ctx: Context) -> str:
    """jupyterhub_config.py: hub-config's, for the notebook image and the overlay network, with how
    hub init runs JupyterHub (TLS, the database, the authenticator, the idle culler)."""
    import dataclasses

    from ..config import ImageConfig
    from ..hub import HubSide, hub_config

    hub = ctx.config.hub
    cfg = dataclasses.replace(ctx.config, image=ImageConfig(notebook_image(ctx)))
    spawning = hub_config(cfg, HubSide(hub_address=SERVICE, network=hub.network))
    admins = sorted({u.strip() for u in hub.admin_users.split(",") if u.strip()})
    return spawning + render("jupyterhub/hub-init.py.j2", container_port=CONTAINER_PORT, admins=admins,
                             authenticator=hub.authenticator, secret=bool(hub.secret_file), secret_path=SECRET_PATH,
                             github_client_id=hub.github_client_id, github_org=hub.github_org,
                             callback_url=f"https://{hub_name(ctx)}:{hub.port}/hub/oauth_callback",
                             idle_timeout=hub.idle_timeout, max_age=hub.max_age)


def service_argv(ctx: Context, label: str = "") -> list[str]:
    """`docker service create` for the hub, with its spec label (empty: left out, for the hash)."""
    hub = ctx.config.hub
    cert, key, _ca = tls_paths(ctx.config)
    mounts = ["type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock",
              f"type=bind,source={CONFIG_DIR},target=/srv/jupyterhub/config,readonly",
              f"type=volume,source={DATA_VOLUME},target=/srv/jupyterhub/data",
              f"type=bind,source={cert},target=/srv/jupyterhub/tls/hub.crt,readonly",
              f"type=bind,source={key},target=/srv/jupyterhub/tls/hub.key,readonly"]
    if hub.secret_file:
        mounts.append(f"type=bind,source={hub.secret_file},target={SECRET_PATH},readonly")
    argv = ["docker", "service", "create", "--detach", "--name", SERVICE]
    if label:
        argv += ["--label", f"{SPEC_LABEL}={label}"]
    # On this manager: the configuration and the secrets are its files. dnsrr: servers reach the
    # hub at its service name without a virtual IP (IPVS), hence the port published in host mode.
    argv += ["--constraint", "node.role==manager", "--endpoint-mode", "dnsrr", "--network", hub.network,
             "--publish", f"mode=host,target={CONTAINER_PORT},published={hub.port}"]
    for mount in mounts:
        argv += ["--mount", mount]
    return [*argv, "--", HubJupyterhubImageStep().image(ctx)]


def spec_label(ctx: Context) -> str:
    """What the service must be made of: its flags, the configuration's text, and the certificate
    it serves (JupyterHub reads it at its start, so a certificate issued again means a restart)."""
    from .hub_registry import wanted_fingerprint

    digest = hashlib.sha256(json.dumps([service_argv(ctx), config_text(ctx), wanted_fingerprint(ctx)]).encode())
    return digest.hexdigest()[:16]


def _wait_until_answering(ctx: Context) -> None:
    deadline = time.monotonic() + START_WAIT
    where = f"127.0.0.1:{ctx.config.hub.port}"
    while True:
        answer = ctx.fact(HUB_API, where)
        if "version" in answer:
            return
        if time.monotonic() >= deadline:
            raise StepFailed(f"{answer['problem']} within {START_WAIT:.0f} s of its start.",
                             f"See `docker service ps --no-trunc {SERVICE}` and `docker service logs {SERVICE}`, fix the "
                             "cause and run hub init again.")
        time.sleep(2.0)
        ctx.facts.forget()


class HubJupyterhubStep:
    name = "hub-jupyterhub"
    description = "JupyterHub as a Swarm service on this manager (authenticator, idle culler, TLS)"

    def files(self, ctx: Context) -> list[PlannedFile]:
        if not ctx.config.hub.jupyterhub_base:
            return []
        return [PlannedFile(CONFIG_FILE, config_text(ctx))]

    def check(self, ctx: Context) -> Check:
        hub = ctx.config.hub
        if not hub.jupyterhub_base:
            return skipped("hub.jupyterhub_base is empty: no JupyterHub service is run here")
        if not notebook_image(ctx):
            return blocked("no notebook image: set hub.notebook_base (hub init builds one) or image.name (yours)")
        reason = ctx.docker.unreachable_reason()
        if reason:
            return blocked(reason, waits_for=("docker",))
        membership = ctx.docker.swarm()
        if membership.state != "active" or not membership.is_manager:
            return blocked("this node manages no swarm, and JupyterHub runs as one of its services",
                           waits_for=("hub-swarm",))
        image_step = HubJupyterhubImageStep()
        if "digest" not in image_step.held(ctx):
            return blocked(f"the registry does not hold JupyterHub's image {image_step.image(ctx)} yet",
                           waits_for=("hub-registry", "hub-jupyterhub-image"))
        actions: list = []
        reasons: list[str] = []
        for planned in self.files(ctx):
            if (write := write_wanted(ctx, planned)) is not None:
                actions.append(write)
                reasons.append(f"{planned.path} {'differs' if write.before is not None else 'is missing'}")
        label = spec_label(ctx)
        service = ctx.fact(SERVICE_INSPECT, SERVICE)
        have = ((service or {}).get("Spec") or {}).get("Labels") or {}
        create = run_command(*service_argv(ctx, label), timeout=300, progress=f"creating the {SERVICE} service",
                             undo=Undo("remove-service", service=SERVICE))
        wait = Call(f"wait until JupyterHub answers at https://127.0.0.1:{hub.port}/hub/api", _wait_until_answering)
        if service is None:
            return needs_change("; ".join([*reasons, f"no service {SERVICE}"]), *actions, create, wait)
        if have.get(SPEC_LABEL) != label:
            why = "its configuration or flags changed" if have.get(SPEC_LABEL) else "it was not made by hub init"
            return needs_change("; ".join([*reasons, f"service {SERVICE} differs from what hub init runs ({why})"]),
                                *actions, run_command("docker", "service", "rm", "--", SERVICE, timeout=300),
                                create, wait)
        answer = ctx.fact(HUB_API, f"127.0.0.1:{hub.port}")
        if actions or "version" not in answer:
            # The configuration file was put back as it was (the label says the service runs it), or
            # the service does not answer: it is started again.
            why = answer.get("problem", "")
            return needs_change("; ".join([*reasons, *([why] if why else [])]), *actions,
                                run_command("docker", "service", "update", "--force", "--detach", "--", SERVICE,
                                            timeout=300),
                                wait)
        return ok(f"service {SERVICE} runs JupyterHub {answer['version']} at https://{hub_name(ctx)}:{hub.port}/ "
                  f"({hub.authenticator} authenticator, idle culler after {hub.idle_timeout} s)",
                  data={"version": answer["version"]})
