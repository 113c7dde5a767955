"""Keeping secrets (join tokens, keys) out of everything the tool prints or logs."""

from __future__ import annotations

import re

# A join token: SWMTKN-1-<CA digest>-<secret>. Anything of this shape is masked in messages.
TOKEN_PATTERN = re.compile(r"SWMTKN-1-[0-9a-z]+-[0-9a-z]+")


def redact(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return TOKEN_PATTERN.sub("SWMTKN-1-<redacted>", text)


def looks_like_join_token(token: str) -> bool:
    return TOKEN_PATTERN.fullmatch(token) is not None
