"""Every file the tool writes comes from a Jinja2 template under templates/.

jinja2 (about 15 ms to import, and each template compiled at its first use) is imported on the
first render, not with this module, which every step imports: commands that render nothing
(`version`, `--help`, a configuration error) do not pay for it.

`status` and `setup` compare files with what their templates render, on a converged node the
same text at every run. So those commands keep a render cache (`use_cache`): RENDER_CACHE holds
the texts the last `setup` rendered, each under the SHA-256 of its template's name and source and
of the values it was rendered with (JSON); a render whose key is there returns that text and
jinja2 is never imported. A changed template or value is another key, rendered by jinja2. Only
`setup` writes the cache (`save_cache`), root's, 0600: a full run writes what it rendered and
nothing older; a run of some steps (`--only`, `--skip`) adds what it rendered to what was there,
so that the steps it did not run keep theirs (the texts it replaced stay too until the next full
run: harmless, a key is the hash of what made its text). A cache that is not root's or that others
could write is not read.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2

# The cache's keys are SHA-256 digests, taken with the interpreter's own SHA-256 where it has one
# (CPython's _sha256, _sha2 from 3.12): hashlib would load OpenSSL first, about 2 ms of a status
# on the benchmark's node; the digest is the same.
try:
    from _sha256 import sha256  # type: ignore[import-not-found]  # CPython's private module: no stub
except ImportError:  # pragma: no cover - another interpreter
    try:
        from _sha2 import sha256  # type: ignore[import-not-found]  # CPython's private module: no stub
    except ImportError:
        from hashlib import sha256


def templates_dir() -> Path:
    packaged = Path(__file__).parent / "templates"  # installed wheel
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"  # source tree


def _pyrepr(value) -> str:
    import jinja2

    # repr() of an undefined value is the word Undefined: strict mode must fail here too.
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return repr(value)


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    # Jinja's own tojson sorts keys and HTML-escapes; daemon.json wants neither.
    env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2)
    # Python literals in generated Python (the runtime wrapper, hub config lines).
    env.filters["pyrepr"] = _pyrepr
    # Words in generated sh (the runtime wrapper's front).
    env.filters["shquote"] = shlex.quote
    return env


RENDER_CACHE = "/var/lib/gpuswarm-node/render-cache.json"
_cache: dict[str, str] | None = None  # key -> text, while a command uses the cache
_cache_path: str = RENDER_CACHE
_used: dict[str, str] = {}  # what this run rendered or found, for save_cache


def use_cache(path: str = RENDER_CACHE) -> None:
    """Use the render cache at `path` for the rest of this process (empty when it is missing,
    unreadable, unsafe or not the cache's format)."""
    global _cache, _cache_path
    from .errors import GpuswarmError
    from .host import read_record

    _cache_path, _cache = path, {}
    try:
        # The running user's (root's), writable by nobody else, no symlink: else not read.
        text = read_record(Path(path), "render cache")
        data = json.loads(text) if text else {}
    except (OSError, ValueError, GpuswarmError):
        return
    if isinstance(data, dict):
        _cache = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def save_cache(partial: bool = False) -> None:
    """Write what this run rendered as the cache; with `partial` (a run of some steps), on top of
    what the cache held. A run that used no cache, or would write what is there, writes nothing."""
    if _cache is None:
        return
    texts = {**_cache, **_used} if partial else _used
    if texts == _cache:
        return
    from .host import atomic_write, ensure_dir

    ensure_dir(os.path.dirname(_cache_path), 0o755)
    atomic_write(Path(_cache_path), json.dumps(texts, sort_keys=True), 0o600)


def _key(template: str, values: dict) -> str | None:
    try:
        source = (templates_dir() / template).read_bytes()
        given = json.dumps(values, sort_keys=True, default=repr).encode()
    except (OSError, TypeError, ValueError):
        return None
    return sha256(template.encode() + b"\0" + source + b"\0" + given).hexdigest()


def render(template: str, **values) -> str:
    cache = _cache
    key = _key(template, values) if cache is not None else None
    if cache is not None and key is not None and key in cache:
        text = cache[key]
    else:
        text = _environment().get_template(template).render(**values)
    if key is not None:
        _used[key] = text
    return text
