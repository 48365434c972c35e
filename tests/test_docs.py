"""The docs hold together: the README stays short, every link and every reference to a section
lands on a heading that exists, and what the docs say about `make up` is what the Makefile takes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tentman_dev.local import REPO_ROOT

pytestmark = pytest.mark.unit

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
DOC_NAMES = {"README": REPO_ROOT / "README.md", "CHANGELOG": REPO_ROOT / "CHANGELOG.md"}


def headings(doc: Path) -> list[str]:
    in_code, found = False, []
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)", line)):
            found.append(match.group(1).strip())
    return found


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_the_readme_is_a_five_minute_read():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 200


def test_every_link_between_the_docs_lands_on_a_file_and_heading_that_exist():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # another site
            path, _, fragment = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            assert file.exists(), (doc.name, target)
            if fragment:
                assert fragment in {anchor(h) for h in headings(file)}, (doc.name, target)


# References to a section in prose, code comments and configuration: a file name, then the
# section's title (or its beginning) in double quotes, on one line.
REFERENCE = re.compile(r"\b(README|CHANGELOG|docs/[\w-]+\.md)(?:\.md)? \"([^\"\n]+)\"")


def test_every_reference_to_a_section_names_one_that_exists():
    roots = ["docker-compose.yaml", ".env.example", "Makefile", "Dockerfile", "deploy", "include", "tests", "docs"]
    files = [
        path
        for root in roots
        for path in ([REPO_ROOT / root] if (REPO_ROOT / root).is_file() else (REPO_ROOT / root).rglob("*"))
        if path.is_file()
        and path.suffix in ("", ".py", ".yml", ".yaml", ".sh", ".md", ".example")
        and "vendor" not in path.parts
    ]
    stale = set()
    for path in files:
        for name, title in REFERENCE.findall(path.read_text(errors="replace")):
            doc = DOC_NAMES.get(name) or REPO_ROOT / name
            if not doc.exists() or not any(h.startswith(title) for h in headings(doc)):
                stale.add((str(path.relative_to(REPO_ROOT)), name, title))
    assert stale == set()


def test_make_up_variables_are_the_ones_the_docs_describe():
    """The Makefile's `up` takes make variables, not Airflow settings: docs/operations.md says which
    option of `tentman-dev up` each one is."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("\nup:", 1)[1].split("\n\n", 1)[0]
    taken = dict(re.findall(r"--([a-z-]+) \$\(or \$\(([A-Z_]+)\),", recipe))
    assert taken, recipe
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = operations.split("\n## Run it locally: `make up`\n", 1)[1].split("\n## ", 1)[0]
    for option, variable in taken.items():
        assert f"| `{variable}` | `tentman-dev up --{option}` |" in section, variable
