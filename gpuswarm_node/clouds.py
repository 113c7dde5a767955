"""Which cloud this machine runs on, and the addresses of that cloud's metadata services.

The cloud is what cloud-init found (its datasource ran at boot): `/run/cloud-init/cloud-id`
(`cloud-id`'s answer, e.g. "aws", "azure-china"), else `v1.cloud_name` / `v1.platform` in
`/run/cloud-init/instance-data.json`; on a machine without cloud-init, the firmware's DMI strings
under /sys/class/dmi/id (the same ones cloud-init's datasources detect their platform by).

Each cloud's addresses are the ones its cloud-init datasource reads (cloudinit/sources/
DataSource*.py, named per row): a container that can reach one can read the instance's user-data
and, on most clouds, credentials. `Guard.ports`: only those TCP ports are guarded, where the
address also serves something containers need (Azure's 168.63.129.16 is the VNet's DNS resolver
on port 53 too).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Guard:
    """One metadata address to reject forwarded packets to: `address` (no prefix), and the TCP
    `ports` when only those are the metadata service's (empty: every packet)."""

    address: str
    ports: tuple[int, ...] = ()

    @property
    def network(self) -> str:
        """The address as iptables prints it in `-d`: with /32 or /128."""
        ip = ipaddress.ip_address(self.address)
        return f"{ip}/{ip.max_prefixlen}"

    @property
    def program(self) -> str:
        return "iptables" if ipaddress.ip_address(self.address).version == 4 else "ip6tables"

    def shown(self) -> str:
        return self.address + (f" (TCP {','.join(map(str, self.ports))})" if self.ports else "")


IMDS = "169.254.169.254"
# {cloud: (its guards, where they come from)}. Names are cloud-init's canonical cloud ids.
CLOUDS: dict[str, tuple[tuple[Guard, ...], str]] = {
    "aws": ((Guard(IMDS), Guard("fd00:ec2::254")),
            "DataSourceEc2.py metadata_urls: http://169.254.169.254, http://[fd00:ec2::254]"),
    "gce": ((Guard(IMDS),),
            "DataSourceGCE.py MD_V1_URL http://metadata.google.internal/computeMetadata/v1/ (169.254.169.254)"),
    "azure": ((Guard(IMDS), Guard("168.63.129.16", (80, 32526))),
              "DataSourceAzure.py / helpers/azure.py: IMDS http://169.254.169.254/metadata, WireServer "
              "168.63.129.16 (DEFAULT_WIRESERVER_ENDPOINT; HTTP on 80, host plugin on 32526; 53 is the VNet's DNS)"),
    "aliyun": ((Guard("100.100.100.200"),), "DataSourceAliYun.py metadata_urls: http://100.100.100.200"),
    "openstack": ((Guard(IMDS),), "DataSourceOpenStack.py metadata_urls: http://169.254.169.254"),
    "oracle": ((Guard(IMDS), Guard("192.0.0.192")),
               "DataSourceOracle.py METADATA_ROOT http://169.254.169.254/opc/v{version}/; 192.0.0.192: OCI "
               "Classic's EC2-like service (the datasource's notes)"),
    "hetzner": ((Guard(IMDS),), "DataSourceHetzner.py BASE_URL_V1 http://169.254.169.254/hetzner/v1"),
    "digitalocean": ((Guard(IMDS),), "DataSourceDigitalOcean.py MD_URL http://169.254.169.254/metadata/v1.json"),
    "scaleway": ((Guard("169.254.42.42"), Guard("fd00:42::42")),
                 "DataSourceScaleway.py DS_BASE_URLS: http://169.254.42.42, http://[fd00:42::42]"),
    "vultr": ((Guard(IMDS),), "DataSourceVultr.py url http://169.254.169.254"),
    "upcloud": ((Guard(IMDS),), "DataSourceUpCloud.py METADATA_URL http://169.254.169.254/metadata/v1.json"),
    "exoscale": ((Guard(IMDS),), "DataSourceExoscale.py METADATA_URL http://169.254.169.254"),
}
# A machine whose cloud is not known: the address most clouds serve, and EC2's IPv6 one.
UNKNOWN: tuple[Guard, ...] = (Guard(IMDS), Guard("fd00:ec2::254"))

# cloud-init's ids and platforms that name a cloud of the table by another word (cloud-id answers
# "aws-china", "aws-gov", "azure-china"; instance-data's platform "ec2").
ALIASES = {"ec2": "aws", "amazon": "aws", "google": "gce", "alibaba": "aliyun", "oci": "oracle"}

# DMI (/sys/class/dmi/id) strings by which cloud-init's datasources detect their platform:
# (file, value, cloud); equality after stripping, as cloud-init's dmi.read_dmi_data reads them.
DMI_SIGNS = (
    ("sys_vendor", "Amazon EC2", "aws"),                      # DataSourceEc2 (Nitro)
    ("product_name", "Google Compute Engine", "gce"),         # DataSourceGCE platform_reports_gce
    ("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77", "azure"),  # DataSourceAzure AZURE_CHASSIS_ASSET_TAG
    ("product_name", "Alibaba Cloud ECS", "aliyun"),          # DataSourceAliYun ALIYUN_PRODUCT
    ("product_name", "OpenStack Nova", "openstack"),          # DataSourceOpenStack VALID_DMI_PRODUCT_NAMES
    ("product_name", "OpenStack Compute", "openstack"),
    ("chassis_asset_tag", "OracleCloud.com", "oracle"),       # DataSourceOracle _is_platform_viable
    ("sys_vendor", "Hetzner", "hetzner"),                     # DataSourceHetzner
    ("sys_vendor", "DigitalOcean", "digitalocean"),           # DataSourceDigitalOcean / helpers
    ("sys_vendor", "Scaleway", "scaleway"),                   # DataSourceScaleway
    ("sys_vendor", "Vultr", "vultr"),                         # helpers/vultr.py is_vultr
    ("sys_vendor", "UpCloud", "upcloud"),                     # helpers/upcloud.py
)
DMI_FILES = tuple(sorted({name for name, _value, _cloud in DMI_SIGNS}))
CLOUD_ID = "/run/cloud-init/cloud-id"
INSTANCE_DATA = "/run/cloud-init/instance-data.json"
DMI_DIR = "/sys/class/dmi/id"


def canonical(name: str | None) -> str | None:
    """A cloud of the table for a cloud-init cloud id, cloud name or platform, or None."""
    word = (name or "").strip().lower()
    if not word:
        return None
    for candidate in (word, word.split("-")[0]):
        candidate = ALIASES.get(candidate, candidate)
        if candidate in CLOUDS:
            return candidate
    return None


def parse_instance_data(text: str | None) -> tuple[str | None, str | None]:
    """(v1.cloud_name, v1.platform) of cloud-init's instance-data.json; (None, None) when the
    file is missing or not that JSON."""
    try:
        v1 = json.loads(text or "").get("v1", {})
    except (ValueError, AttributeError):
        return None, None
    if not isinstance(v1, dict):
        return None, None
    values = [v1.get(k) for k in ("cloud_name", "platform")]
    return tuple(v if isinstance(v, str) else None for v in values)  # type: ignore[return-value]


def detect(cloud_id: str | None, instance_data: str | None, dmi: dict[str, str | None]) -> tuple[str | None, str]:
    """(the cloud, how it was found) from cloud-init's files and the DMI strings ({file: text});
    (None, what was looked at) when none names a cloud of the table."""
    if canonical(cloud_id):
        return canonical(cloud_id), f"cloud-init's cloud id {cloud_id.strip()!r}"
    name, platform = parse_instance_data(instance_data)
    for label, value in (("cloud_name", name), ("platform", platform)):
        if canonical(value):
            return canonical(value), f"cloud-init's instance data ({label} {value!r})"
    for file, value, cloud in DMI_SIGNS:
        if (dmi.get(file) or "").strip() == value:
            return cloud, f"DMI {file} {value!r}"
    seen = (cloud_id or "").strip() or name or platform
    return None, (f"cloud-init names {seen!r}, not a cloud with known metadata addresses" if seen
                  else "neither cloud-init nor the DMI strings name a cloud")


def parse_addresses(text: str) -> tuple[str, ...]:
    """The addresses of a comma-separated list (config `docker.metadata_addresses`), each in its
    normal form; raises ValueError naming the first word that is not an IP address."""
    out = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        try:
            ip = ipaddress.ip_address(word)
        except ValueError:
            raise ValueError(word) from None
        if getattr(ip, "scope_id", None):  # fe80::1%eth0: iptables takes no zone
            raise ValueError(word)
        out.append(str(ip))
    return tuple(dict.fromkeys(out))


def guards_for(cloud: str | None, extra: tuple[str, ...] = ()) -> tuple[Guard, ...]:
    """The cloud's guards (UNKNOWN's when None), then the configured addresses not among them."""
    base = CLOUDS[cloud][0] if cloud in CLOUDS else UNKNOWN
    have = {g.address for g in base if not g.ports}
    return base + tuple(Guard(a) for a in extra if a not in have)
