"""What the filter table does with a forwarded packet: `iptables -S` parsed and walked.

A pure parser and evaluator, for checks that must judge a rule by its effect rather than by its
presence (the metadata guard: a REJECT that an earlier ACCEPT shadows protects nothing). The
packet is a set of packets, `Probe`: forwarded (the FORWARD chain of the filter table, as
netfilter walks it for a container's packet that leaves through the host), to one destination
address, maybe only one protocol and some destination ports, and the first of its connection
(conntrack state NEW). What a rule matches of it is one of three: none, all, or some (a match
the probe does not decide: the container's source address, the interfaces, a module this file
does not model). Walking is conservative: a packet escapes when some of the probe could be
accepted before the rule looked for.

Semantics from iptables(8) and iptables-extensions(8): rules in order; ACCEPT ends the walk;
RETURN in a user-defined chain resumes the caller after its jump, in a built-in chain applies its
policy; `-j CHAIN` resumes after the jump when CHAIN returns, `-g CHAIN` resumes the caller's
caller; non-terminating targets (LOG, MARK, ...) go on to the next rule.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field

# Targets that let the packet go on to the next rule (iptables-extensions(8)).
NON_TERMINATING = frozenset({"LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "CT", "TRACE", "TCPMSS", "CLASSIFY",
                             "DSCP", "TOS", "NOTRACK", "AUDIT", "SET", "CHECKSUM", "TEE", "HMARK", "IDLETIMER",
                             "LED", "SECMARK", "CONNSECMARK", "TTL", "HL", "RATEEST", "SYNPROXY"})
BLOCKING = frozenset({"REJECT", "DROP"})
# Options that say nothing about which packets match (the module name, the target's own options).
NEUTRAL = frozenset({"-m", "--match", "--comment", "--reject-with", "--log-prefix", "--log-level",
                     "--set-mark", "--set-xmark", "--log-uid", "--nflog-group", "--nflog-prefix"})
MAX_DEPTH = 32  # netfilter refuses loops; a listing that has one is read as an escape


@dataclass(frozen=True)
class Rule:
    """One `-A CHAIN ...` line: its options as (option, value words, negated), its target and
    whether it is a goto (`-g`)."""

    chain: str
    line: str
    options: tuple[tuple[str, tuple[str, ...], bool], ...]
    target: str | None
    goto: bool = False

    def value(self, option: str) -> tuple[str, ...] | None:
        for name, values, _negated in self.options:
            if name == option:
                return values
        return None


@dataclass
class Table:
    """An `iptables -S` listing: {chain: [rules in order]} and the built-in chains' policies."""

    chains: dict[str, list[Rule]] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)


def parse(listing: str) -> Table:
    """Parse `iptables -S` (or `ip6tables -S`) output. Lines are shell words as iptables quotes
    them (a comment with spaces is in double quotes); a line that does not split is skipped."""
    table = Table()
    for line in listing.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if len(words) >= 3 and words[0] == "-P":
            table.policies[words[1]] = words[2]
            table.chains.setdefault(words[1], [])
        elif len(words) >= 2 and words[0] == "-N":
            table.chains.setdefault(words[1], [])
        elif len(words) >= 2 and words[0] == "-A":
            table.chains.setdefault(words[1], []).append(_rule(words[1], line, words[2:]))
    return table


def _rule(chain: str, line: str, words: list[str]) -> Rule:
    options: list[tuple[str, tuple[str, ...], bool]] = []
    target, goto, negated, i = None, False, False, 0
    while i < len(words):
        word = words[i]
        if word == "!":
            negated, i = True, i + 1
            continue
        values = []
        i += 1
        while i < len(words) and words[i] != "!" and not (words[i].startswith("-") and len(words[i]) > 1
                                                             and not _number(words[i])):
            values.append(words[i])
            i += 1
        if word in ("-j", "--jump", "-g", "--goto") and values:
            target, goto = values[0], word in ("-g", "--goto")
        else:
            options.append((word, tuple(values), negated))
        negated = False
    return Rule(chain, line, tuple(options), target, goto)


def _number(word: str) -> bool:
    return word.lstrip("-").isdigit()


@dataclass(frozen=True)
class Probe:
    """The packets asked about: forwarded to `address`, of `protocol` ("tcp", "udp"; None: any)
    to `ports` (None: any), each the first of its connection."""

    address: str
    protocol: str | None = None
    ports: tuple[int, ...] | None = None


NONE, ALL, SOME = "none", "all", "some"


def matches(rule: Rule, probe: Probe) -> str:
    """How much of `probe` the rule's matches take: NONE, ALL or SOME."""
    verdicts = [_option(name, values, negated, probe) for name, values, negated in rule.options]
    if NONE in verdicts:
        return NONE
    return ALL if all(v == ALL for v in verdicts) else SOME


def _flip(verdict: str, negated: bool) -> str:
    if not negated or verdict == SOME:
        return verdict
    return NONE if verdict == ALL else ALL


def _option(name: str, values: tuple[str, ...], negated: bool, probe: Probe) -> str:
    if name in NEUTRAL:
        return ALL
    if name in ("-d", "--destination", "--dst") and values:
        return _flip(_contains(values[0], probe.address), negated)
    if name in ("-s", "--source", "--src", "-i", "--in-interface", "-o", "--out-interface") and values:
        # A container's source address and the interfaces are the probe's unknowns; only a match
        # of everything ("0.0.0.0/0", "+") takes all of it.
        return _flip(ALL, negated) if values[0] in ("0.0.0.0/0", "::/0", "+") else SOME
    if name in ("-p", "--protocol") and values:
        protocol = values[0].lower()
        if protocol in ("all", "0"):
            return _flip(ALL, negated)
        if probe.protocol is None:
            return SOME
        return _flip(ALL if protocol == probe.protocol else NONE, negated)
    if name in ("--dport", "--destination-port", "--dports", "--destination-ports") and values:
        return _flip(_ports(values[0], probe), negated)
    if name in ("--ctstate", "--state") and values:
        # The probe is a connection's first packet: NEW. A REJECT of it stops the connection.
        return _flip(ALL if "NEW" in values[0].upper().split(",") else NONE, negated)
    return SOME


def _contains(network: str, address: str) -> str:
    try:
        net = ipaddress.ip_network(network, strict=False)
        ip = ipaddress.ip_address(address.split("/")[0])
    except ValueError:
        return SOME
    if net.version != ip.version:
        return NONE
    return ALL if ip in net else NONE


def _ports(spec: str, probe: Probe) -> str:
    if probe.ports is None:
        return SOME
    wanted: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition(":")
        try:
            wanted.update(range(int(low or 0), int(high or low or 65535) + 1))
        except ValueError:
            return SOME
    inside = [p in wanted for p in probe.ports]
    return ALL if all(inside) else NONE if not any(inside) else SOME


@dataclass(frozen=True)
class Verdict:
    """Where the probe's packets end: `hit` when every one meets a rule `is_target` accepts;
    otherwise `why` names the first rule (or policy) that lets some through."""

    hit: bool
    why: str = ""


HIT, RETURNS = "hit", "returns"


def walk(table: Table, probe: Probe, is_target, chain: str = "FORWARD") -> Verdict:
    """Whether every packet of `probe` entering built-in `chain` meets a rule for which
    `is_target(rule)` is true, with every match of that rule taking all of the probe (a REJECT
    narrowed by `-i`, `-p` or `-s` protects only part of it)."""
    outcome = _walk(table, probe, is_target, chain, 0)
    if outcome == HIT:
        return Verdict(True)
    if outcome == RETURNS:
        policy = table.policies.get(chain, "ACCEPT")
        return Verdict(False, f"it reaches the end of {chain} (policy {policy}) without meeting the rule")
    return Verdict(False, outcome)


def _walk(table: Table, probe: Probe, is_target, chain: str, depth: int) -> str:
    """HIT, RETURNS (some packets leave the chain by its end or a RETURN) or a reason (str)."""
    if depth > MAX_DEPTH:
        return f"the chains jump in a loop at {chain}"
    returned = False  # some packets left by a RETURN that took only part of them
    for rule in table.chains.get(chain, []):
        taken = matches(rule, probe)
        if taken == NONE:
            continue
        if is_target(rule):
            if taken == ALL:
                return RETURNS if returned else HIT
            continue  # narrowed: the packets it leaves go on
        target = rule.target
        if target is None or target in NON_TERMINATING or target in BLOCKING:
            continue
        if target == "ACCEPT" or target in ("QUEUE", "NFQUEUE"):
            return f"`{rule.line}` lets it through first"
        if target == "RETURN":
            if taken == ALL:
                return RETURNS
            returned = True
            continue
        if target not in table.chains:
            return f"`{rule.line}` sends it to {target}, which this check does not model"
        inner = _walk(table, probe, is_target, target, depth + 1)
        if inner not in (HIT, RETURNS):
            return inner
        if rule.goto and inner == RETURNS:
            # A goto's return resumes the caller's caller: those packets leave this chain.
            if taken == ALL:
                return RETURNS
            returned = True
        elif taken == ALL and inner == HIT:
            return RETURNS if returned else HIT
    return RETURNS
