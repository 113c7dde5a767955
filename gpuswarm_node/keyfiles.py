"""What kind of SSH key file a text is, so a key of the wrong kind is named as such with its fix:
a private key where a public one belongs (`hub authorize --key`, host keys), a public key or a
passphrase-protected key where the node's private key belongs (swarm.ssh_key, used unattended at
boot).

The formats, from OpenSSH's own sources: a public key is one line "type base64 [comment]"
(sshd(8) AUTHORIZED_KEYS FILE FORMAT); RFC 4716 public keys start "---- BEGIN SSH2 PUBLIC KEY ----";
OpenSSH's private key format (PROTOCOL.key) is PEM-armoured "openssh-key-v1\\0" followed by the
cipher name as an SSH string ("none" when there is no passphrase); the older PEM (PKCS#1, SEC 1)
keys say "Proc-Type: 4,ENCRYPTED" when encrypted (RFC 1421), PKCS#8 ones are "ENCRYPTED PRIVATE
KEY"; PuTTY's own files start "PuTTY-User-Key-File-".
"""

from __future__ import annotations

import base64
import re

PUBLIC = "public"
PRIVATE = "private"
ENCRYPTED = "private, passphrase-protected"
PUTTY = "putty"
SSH2_PUBLIC = "ssh2-public"
OTHER = "other"

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----(.*?)-----END \1-----", re.S)
_KEY_TYPE = re.compile(r"(ssh-|ecdsa-|sk-)[a-z0-9@.-]+")


def kind(text: str) -> str:
    """PUBLIC, PRIVATE, ENCRYPTED, PUTTY, SSH2_PUBLIC or OTHER (not a key file this tells apart)."""
    stripped = text.lstrip()
    if stripped.startswith("PuTTY-User-Key-File-"):
        return PUTTY
    if stripped.startswith("---- BEGIN SSH2 PUBLIC KEY ----"):
        return SSH2_PUBLIC
    pem = _PEM.search(text)
    if pem is not None:
        label, body = pem.group(1), pem.group(2)
        if label == "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED" in body:
            return ENCRYPTED
        if label == "OPENSSH PRIVATE KEY":
            try:
                blob = base64.b64decode("".join(body.split()), validate=True)
            except ValueError:
                return OTHER
            magic = b"openssh-key-v1\0"
            if not blob.startswith(magic) or len(blob) < len(magic) + 4:
                return OTHER
            size = int.from_bytes(blob[len(magic):len(magic) + 4], "big")
            cipher = blob[len(magic) + 4:len(magic) + 4 + size]
            return PRIVATE if cipher == b"none" else ENCRYPTED
        return PRIVATE
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if lines and all(len(words) >= 2 and _KEY_TYPE.fullmatch(words[0]) for words in lines):
        return PUBLIC
    return OTHER


def private_key_problem(text: str) -> str | None:
    """Why `text` cannot be the private key a node logs in to its manager with, unattended, as a
    clause with its fix; None when it can."""
    found = kind(text)
    if found == PRIVATE:
        return None
    if found in (PUBLIC, SSH2_PUBLIC):
        return ("is a public key, not the private key: set it to the private key file (the one without .pub; "
                "its .pub line is what the hub authorises)")
    if found == ENCRYPTED:
        return ("is protected by a passphrase, which nobody is there to type when setup runs at boot: remove it "
                "with `ssh-keygen -p -N '' -f FILE` on a copy, or give a key without one")
    if found == PUTTY:
        return ("is a PuTTY key: convert it with `puttygen FILE -O private-openssh -o FILE.openssh` and give that")
    return "holds no private key: give the OpenSSH private key file (ssh-keygen writes it)"


def public_key_problem(text: str, where: str) -> tuple[str, str] | None:
    """(cause, fix) when `text` is a key file of another kind than the one-line OpenSSH public key
    `where` asks for; None otherwise (parse_public_key then checks the line itself)."""
    found = kind(text)
    if found in (PRIVATE, ENCRYPTED):
        return (f"{where} is a private key, not a public one.",
                "Give the .pub file beside it (ssh-keygen writes KEY and KEY.pub), and keep the private key "
                "where it is.")
    if found == SSH2_PUBLIC:
        return (f"{where} is an RFC 4716 (SSH2) public key, not an OpenSSH one.",
                "Convert it with `ssh-keygen -i -f FILE > FILE.pub` and give that.")
    if found == PUTTY:
        return (f"{where} is a PuTTY key file.",
                "Export its public key with `puttygen FILE -O public-openssh -o FILE.pub` and give that.")
    return None
