"""Every file the tool writes comes from a Jinja2 template under templates/.

jinja2 (about 14 ms to import) is imported on the first render, not with this module, which every
step imports: commands that render nothing (`version`, `--help`, a configuration error) do not pay
for it. `status` still does: the docker-daemon check renders the files it compares."""

from __future__ import annotations

import functools
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2


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


def render(template: str, **values) -> str:
    return _environment().get_template(template).render(**values)
