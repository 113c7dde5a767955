"""Spot and maintenance notices from the cloud's instance metadata service, read by `watch`.

GPU workers are often spot instances: EC2 gives two minutes' notice before it takes one back, GCE
thirty seconds, Azure thirty at least. watch reads what its cloud's metadata service documents each
round and acts before the deadline: a PAUSE notice (capacity may go soon) sets the node's
availability to pause, so the manager places no new notebook there and the running ones stay; a
LEAVE notice (the instance goes at `deadline`) makes the node leave the swarm as `gpuswarm-node
leave` does: drain, wait for its notebooks to move, leave, have the manager forget it.

What is read (from the host only: containers cannot reach the service, see metadata_guard):
- aws: PUT /latest/api/token (IMDSv2, with `X-aws-ec2-metadata-token-ttl-seconds`), then with the
  token in `X-aws-ec2-metadata-token`:
  - /latest/meta-data/spot/instance-action: `{"action": "terminate"|"stop"|"hibernate", "time":
    ISO 8601}` (404: none): LEAVE by `time`;
  - /latest/meta-data/events/recommendations/rebalance: `{"noticeTime": ...}`: PAUSE;
  - /latest/meta-data/events/maintenance/scheduled: `[{"Code", "NotBefore": "21 Jan 2019 09:00:43
    GMT", "State"}]`: PAUSE, then LEAVE from LEAVE_AHEAD seconds before NotBefore.
- gce (`Metadata-Flavor: Google`): /computeMetadata/v1/instance/preempted `TRUE`: LEAVE within 30 s;
  /computeMetadata/v1/instance/maintenance-event `TERMINATE_ON_HOST_MAINTENANCE`: LEAVE (GPU VMs
  are stopped for host maintenance, not migrated).
- azure (`Metadata: true`): /metadata/scheduledevents?api-version=2020-07-01, `{"Events":
  [{"EventType", "Resources", "NotBefore"}]}`: Preempt, Terminate, Reboot or Redeploy of this VM
  (its name from /metadata/instance/compute/name): LEAVE by NotBefore; Freeze (seconds) is ignored.

Sources: EC2 User Guide, "Spot Instance interruption notices", "EC2 instance rebalance
recommendations", "Instance metadata categories" (events/maintenance/scheduled) and "Use IMDSv2";
Compute Engine docs, "Detect if a VM was preempted" and "About host events" (maintenance-event);
Azure docs, "Azure Metadata Service: Scheduled Events for Linux VMs" (the VM's name from
/metadata/instance/compute/name).

The parsers are pure (texts in, notices out; None: the service answered 404, nothing scheduled);
`read_notices` does the HTTP, each request bounded by TIMEOUT, and never raises.
"""

from __future__ import annotations

import email.utils
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

PAUSE, LEAVE = "pause", "leave"
TIMEOUT = 2.0  # seconds per request: the service answers in milliseconds, a round must not wait
LEAVE_AHEAD = 600.0  # seconds before a scheduled maintenance at which the node leaves
GCE_PREEMPT_NOTICE = 30.0  # seconds between GCE's preempted=TRUE and the stop
DEFAULT_BASE = "http://169.254.169.254"
CLOUDS = ("aws", "gce", "azure")  # the clouds whose notices are read
# Azure event types that take the VM away (Freeze pauses it for seconds: nothing to do).
AZURE_LEAVE = ("Preempt", "Terminate", "Reboot", "Redeploy")


@dataclass(frozen=True)
class Notice:
    """What the cloud announced: `action` PAUSE or LEAVE; `reason` the gpuswarm.health label's
    slug; `deadline` epoch seconds by which the node must be gone (None: not said); `detail` one
    sentence for the log and status."""

    action: str
    reason: str
    deadline: float | None
    detail: str


def _iso(text: str) -> float | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _http_date(text: str) -> float | None:
    """EC2's and Azure's "21 Jan 2019 09:00:43 GMT" / "Mon, 19 Sep 2016 18:29:47 GMT"."""
    if not isinstance(text, str):
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(text if "," in text else "Mon, " + text)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.replace(tzinfo=parsed.tzinfo or timezone.utc).timestamp()


def _json(text: str | None):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_ec2(instance_action: str | None, rebalance: str | None, scheduled: str | None,
              now: float) -> list[Notice]:
    """EC2's notices from the three documents' texts (None: 404)."""
    notices = []
    action = _json(instance_action)
    if isinstance(action, dict) and action.get("action") in ("terminate", "stop", "hibernate"):
        deadline = _iso(str(action.get("time", "")))
        notices.append(Notice(LEAVE, "spot-interruption", deadline,
                              f"EC2 will {action['action']} this spot instance"
                              + (f" at {_utc(deadline)}" if deadline else "")))
    if isinstance(_json(rebalance), dict):
        notices.append(Notice(PAUSE, "rebalance-recommended", None,
                              "EC2 recommends rebalancing: this spot instance is at higher risk of interruption"))
    events = _json(scheduled)
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or str(event.get("State", "active")).lower() not in ("active", "scheduled"):
            continue
        starts = _http_date(event.get("NotBefore", ""))
        code = str(event.get("Code", "maintenance"))[:40]
        detail = f"EC2 scheduled {code}" + (f" from {_utc(starts)}" if starts else "")
        soon = starts is None or starts - now <= LEAVE_AHEAD
        notices.append(Notice(LEAVE if soon else PAUSE, "maintenance", starts, detail))
    return notices


def parse_gce(preempted: str | None, maintenance_event: str | None, now: float) -> list[Notice]:
    """Compute Engine's notices from instance/preempted and instance/maintenance-event."""
    notices = []
    if (preempted or "").strip().upper() == "TRUE":
        notices.append(Notice(LEAVE, "spot-interruption", now + GCE_PREEMPT_NOTICE,
                              "Compute Engine is preempting this VM"))
    if (maintenance_event or "").strip().upper().startswith("TERMINATE"):
        notices.append(Notice(LEAVE, "maintenance", None,
                              "Compute Engine will stop this VM for host maintenance"))
    return notices


def parse_azure(scheduled_events: str | None, vm_name: str | None, now: float) -> list[Notice]:
    """Azure's Scheduled Events that concern this VM (`vm_name`; every event when unknown)."""
    data = _json(scheduled_events)
    events = data.get("Events") if isinstance(data, dict) else None
    notices = []
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or event.get("EventType") not in AZURE_LEAVE:
            continue
        resources = event.get("Resources")
        if vm_name and isinstance(resources, list) and vm_name not in resources:
            continue
        deadline = _http_date(event.get("NotBefore", "")) if event.get("NotBefore") else None
        kind = event["EventType"]
        notices.append(Notice(LEAVE, "spot-interruption" if kind == "Preempt" else "maintenance", deadline,
                              f"Azure scheduled {kind} of this VM" + (f" at {_utc(deadline)}" if deadline else "")))
    return notices


def first(notices: list[Notice]) -> Notice | None:
    """The notice to act on: a LEAVE before a PAUSE, the earliest deadline first."""
    return min(notices, key=lambda n: (n.action != LEAVE, n.deadline if n.deadline is not None else float("inf")),
               default=None)


# (method, path, headers) -> (status, body text); raises OSError when the service cannot be reached.
Fetch = Callable[[str, str, dict], "tuple[int, str]"]


def http_fetch(base: str, timeout: float = TIMEOUT) -> Fetch:
    """The real Fetch: urllib against `base` (scheme and host, no path), no proxy (the metadata
    service is link-local; a proxy from the environment must not see its token)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch(method: str, path: str, headers: dict) -> tuple[int, str]:
        request = urllib.request.Request(base + path, method=method, headers=headers)
        try:
            with opener.open(request, timeout=timeout) as response:
                return response.status, response.read(65536).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    return fetch


def read_notices(cloud: str, fetch: Fetch, now: float) -> tuple[list[Notice], str | None]:
    """The notices of `cloud` (one of CLOUDS), and why they could not be read (None: they were)."""

    def get(path: str, headers: dict) -> str | None:
        status, text = fetch("GET", path, headers)
        if status == 404:
            return None
        if status != 200:
            raise OSError(f"the metadata service answered {status} for {path}")
        return text

    try:
        if cloud == "aws":
            status, token = fetch("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"})
            if status != 200 or not token.strip():
                return [], f"the metadata service gave no IMDSv2 token (HTTP {status})"
            headers = {"X-aws-ec2-metadata-token": token.strip()}
            return parse_ec2(get("/latest/meta-data/spot/instance-action", headers),
                             get("/latest/meta-data/events/recommendations/rebalance", headers),
                             get("/latest/meta-data/events/maintenance/scheduled", headers), now), None
        if cloud == "gce":
            headers = {"Metadata-Flavor": "Google"}
            return parse_gce(get("/computeMetadata/v1/instance/preempted", headers),
                             get("/computeMetadata/v1/instance/maintenance-event", headers), now), None
        if cloud == "azure":
            headers = {"Metadata": "true"}
            name = get("/metadata/instance/compute/name?api-version=2021-02-01&format=text", headers)
            return parse_azure(get("/metadata/scheduledevents?api-version=2020-07-01", headers),
                               (name or "").strip() or None, now), None
    except OSError as exc:
        return [], f"the metadata service did not answer: {getattr(exc, 'reason', None) or exc}"
    return [], f"no notices are read on {cloud}"
