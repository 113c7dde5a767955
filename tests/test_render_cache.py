"""The render cache of status and setup (render.use_cache, save_cache): a render whose template,
source and values are the last setup's returns that setup's text without importing jinja2; any
other render goes to jinja2; an unsafe cache is not read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuswarm_node import render

REPO = Path(__file__).resolve().parents[1]
UNIT = "metadata-guard.service.j2"


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(render, "_cache", None)
    monkeypatch.setattr(render, "_used", {})


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_render_setup_cached_needs_no_jinja2(tmp_path):
    cache = tmp_path / "state" / "render-cache.json"
    first = run(f"from gpuswarm_node import render; render.use_cache({str(cache)!r}); "
                f"print(render.render({UNIT!r}, script='/usr/local/lib/x'), end=''); render.save_cache()")
    assert "ExecStart=/usr/local/lib/x" in first
    assert cache.stat().st_mode & 0o777 == 0o600 and len(json.loads(cache.read_text())) == 1
    again = run(f"import sys; from gpuswarm_node import render; render.use_cache({str(cache)!r}); "
                f"print(render.render({UNIT!r}, script='/usr/local/lib/x'), end=''); "
                "print('jinja2' in sys.modules, end='')")
    assert again == first + "False"
    other = run(f"import sys; from gpuswarm_node import render; render.use_cache({str(cache)!r}); "
                f"print(render.render({UNIT!r}, script='/other'), end=''); print('jinja2' in sys.modules, end='')")
    assert "ExecStart=/other" in other and other.endswith("True")


def test_a_changed_template_is_rendered_again(tmp_path, monkeypatch):
    cache = tmp_path / "render-cache.json"
    render.use_cache(str(cache))
    render.render(UNIT, script="/x")
    render.save_cache()
    templates = tmp_path / "templates"
    shutil.copytree(render.templates_dir(), templates)
    (templates / UNIT).write_text((templates / UNIT).read_text().replace("Type=oneshot", "Type=exec"))
    monkeypatch.setattr(render, "templates_dir", lambda: templates)
    monkeypatch.setattr(render, "_used", {})
    render._environment.cache_clear()
    try:
        render.use_cache(str(cache))
        assert "Type=exec" in render.render(UNIT, script="/x")
    finally:
        render._environment.cache_clear()


def test_setup_keeps_only_what_it_rendered(tmp_path):
    cache = tmp_path / "render-cache.json"
    render.use_cache(str(cache))
    render.render(UNIT, script="/a")
    render.save_cache()
    render._used.clear()
    render.use_cache(str(cache))
    render.render(UNIT, script="/b")
    render.save_cache()
    assert [text for text in json.loads(cache.read_text()).values()] == [render.render(UNIT, script="/b")]


@pytest.mark.parametrize("unsafe", ["world-writable", "symlink"])
def test_an_unsafe_cache_is_not_read(tmp_path, unsafe):
    cache = tmp_path / "render-cache.json"
    render.use_cache(str(cache))
    key_text = render.render(UNIT, script="/x")
    render.save_cache()
    forged = {key: "forged" for key in json.loads(cache.read_text())}
    if unsafe == "world-writable":
        cache.write_text(json.dumps(forged))
        os.chmod(cache, 0o666)
        path = cache
    else:
        real = tmp_path / "elsewhere.json"
        real.write_text(json.dumps(forged))
        os.chmod(real, 0o600)
        path = tmp_path / "link.json"
        path.symlink_to(real)
    render.use_cache(str(path))
    assert render._cache == {} and render.render(UNIT, script="/x") == key_text


def test_a_run_of_some_steps_adds_what_it_rendered_and_keeps_the_rest(tmp_path):
    cache = tmp_path / "render-cache.json"
    render.use_cache(str(cache))
    full = render.render(UNIT, script="/a")
    render.save_cache()
    render._used.clear()
    render.use_cache(str(cache))
    partial = render.render(UNIT, script="/b")  # `setup --only X`: X's file changed
    render.save_cache(partial=True)
    assert sorted(json.loads(cache.read_text()).values()) == sorted([full, partial])
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    render._used.clear()
    render.use_cache(str(cache))
    render.render(UNIT, script="/b")  # the next full run keeps only what it rendered
    render.save_cache()
    assert list(json.loads(cache.read_text()).values()) == [partial]


def test_the_cache_key_is_the_sha256_of_name_source_and_values():
    import hashlib

    source = (render.templates_dir() / UNIT).read_bytes()
    given = json.dumps({"script": "/x"}, sort_keys=True).encode()
    assert render._key(UNIT, {"script": "/x"}) == hashlib.sha256(UNIT.encode() + b"\0" + source + b"\0" + given).hexdigest()
