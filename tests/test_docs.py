"""The front door stays short and true: README.md within its length, its links reaching real files
and headings, and the documentation site (docs/, mkdocs.yml) building with no broken link."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from markdown.extensions.toc import slugify

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_README_LINES = 250
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """The ids mkdocs (Python-Markdown's toc) gives the headings of a Markdown file."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slugify(re.sub(r"[`*]", "", m.group(1)).strip(), "-") for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_readme_is_a_short_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move reference and internals to docs/"


def test_the_quick_start_verifies_the_release_tarball_of_this_version():
    """The worker's quick start copies and checks what tools/release.sh makes for this version
    (gpuswarm-node-X.Y.Z.tar.gz and its .sha256), so a new version cannot leave it naming another."""
    from gpuswarm_node import __version__

    text = README.read_text()
    name = f"gpuswarm-node-{__version__}.tar.gz"
    start = text.index("<!-- quick-start:start -->")
    assert f"scp dist/{name} dist/{name}.sha256 " in text[:start]
    commands = text[start:text.index("<!-- quick-start:end -->")].splitlines()
    assert commands[2] == f"sha256sum -c {name}.sha256", "the checksum is verified before anything is unpacked"
    assert f"tar -xzf ~/{name} " in commands[3]
    assert re.findall(r"gpuswarm-node-[0-9][0-9.]*\.tar\.gz", text) == [name] * 4


def test_every_link_of_the_readme_reaches_a_file_and_a_heading():
    for target in LINK.findall(README.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (REPO / path) if path else README
        assert file.exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(file), f"README.md links to {target}, and {path or 'README.md'} has no such heading"


def test_the_documentation_builds_with_no_broken_link(tmp_path):
    # mkdocs.yml: strict, and every link and anchor checked (validation:), so a warning fails it.
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
                             "--config-file", str(REPO / "mkdocs.yml")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "index.html").exists()


def test_a_broken_anchor_fails_the_build(tmp_path):
    # The check above can fail: the same build over a copy of docs/ with one bad anchor.
    docs = tmp_path / "docs"
    docs.mkdir()
    for page in (REPO / "docs").glob("*.md"):
        (docs / page.name).write_text(page.read_text())
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[gone](hub.md#no-such-heading)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((REPO / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}"))
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
                             "--config-file", str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no-such-heading" in result.stderr, result.stderr
