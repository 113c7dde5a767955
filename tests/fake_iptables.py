"""A stand-in for iptables/ip6tables for running the metadata guard's script: the filter table
kept as `iptables -S` lines in the file $FAKE_IPTABLES_STATE.<program>. It does what the script
uses: -S [CHAIN], -N, -C, -I CHAIN [N], -A, -D (rule spec), -w ignored; a REJECT without
--reject-with is printed with iptables' default, as the real one does."""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    program = os.path.basename(argv[0])
    path = f"{os.environ['FAKE_IPTABLES_STATE']}.{program}"
    with open(path) as f:
        lines = f.read().splitlines()
    args = [a for a in argv[1:] if a != "-w"]
    op, rest = args[0], args[1:]
    if op == "-S":
        shown = [l for l in lines if not rest or l.split()[1] == rest[0]]
        print("\n".join(shown))
        return 0
    chain = rest[0]
    if op == "-N":
        if f"-N {chain}" in lines or chain == "FORWARD":
            return 1
        lines.append(f"-N {chain}")
    else:
        words = rest[1:]
        position = None
        if op == "-I" and words and words[0].isdigit():
            position, words = int(words[0]), words[1:]
        if "REJECT" in words and "--reject-with" not in words:
            words += ["--reject-with", "icmp6-port-unreachable" if program == "ip6tables" else "icmp-port-unreachable"]
        rule = " ".join(["-A", chain, *words])
        rules = [i for i, l in enumerate(lines) if l.startswith(f"-A {chain} ")]
        if op == "-C":
            return 0 if rule in lines else 1
        if op == "-D":
            if rule not in lines:
                return 1
            lines.remove(rule)
        elif op == "-A":
            lines.insert(rules[-1] + 1 if rules else len(lines), rule)
        elif op == "-I":
            index = (position or 1) - 1
            at = rules[index] if index < len(rules) else (rules[-1] + 1 if rules else len(lines))
            lines.insert(at, rule)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
