"""Text from outside (registries, the manager's SSH answers, apt and dpkg, Docker's errors, an
image's names and labels) made safe to print and log: `clean` strips what a terminal would act on
instead of showing.

What a terminal acts on (ECMA-48; xterm's ctlseqs): C0 controls (U+0000-U+001F) and DEL, C1
controls (U+0080-U+009F, among them the 8-bit CSI U+009B and OSC U+009D), and escape sequences:
CSI (`ESC [` parameters, intermediates, a final byte), OSC (`ESC ]` ... BEL or ST, which can set a
window title, write the clipboard or make a hyperlink), DCS/SOS/PM/APC (`ESC P`, `ESC X`, `ESC ^`,
`ESC _` ... ST), and two-byte `ESC x`. Also the Unicode bidirectional formatting characters
(UAX #9: U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C), which reorder what follows them
on screen (a "Trojan Source" line), and U+2028/U+2029, which some terminals break lines at.

The tool applies it where outside text is funnelled into what it prints and logs: every
GpuswarmError's message (errors.py), every step's and preflight check's detail and actions
(engine.StepReport, PreflightReport), and the live streams (progress: Docker's pull events, apt's
status lines). So the console, `--json`, and the run log get the same clean text.
"""

from __future__ import annotations

import re

# A whole escape sequence, 7-bit or 8-bit introducer; an unterminated string sequence runs to the end.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"              # CSI
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"                                    # nF / Fp / Fe / Fs, or a lone ESC
)
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"
_CONTROLS = "".join(map(chr, [*range(0x00, 0x20), 0x7f, *range(0x80, 0xa0)])) + _BIDI
_DROP = {ord(c): None for c in _CONTROLS}
_DROP_KEEP_LINES = {k: v for k, v in _DROP.items() if k not in (0x09, 0x0a)}
_DROP_ONE_LINE = {**_DROP, 0x09: " ", 0x0a: " "}


def clean(text: object, lines: bool = True) -> str:
    """`text` (str() of it) without escape sequences, control characters or bidirectional
    formatting characters; tab and newline are kept when `lines`, else each becomes a space."""
    if not isinstance(text, str):
        text = str(text)
    if text.isprintable():
        return text  # the common case, fast: isprintable is False for every character removed
    return _SEQUENCE.sub("", text).translate(_DROP_KEEP_LINES if lines else _DROP_ONE_LINE)


def clean_event(event: dict) -> dict:
    """A Docker JSON-message event (a pull's progress) with every string in it cleaned, one line each."""
    def walk(value):
        if isinstance(value, str):
            return clean(value, lines=False)
        if isinstance(value, dict):
            return {clean(k, lines=False): walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value
    return walk(event)
