"""Every page, section and repository path that the package, the recipes, the README and the docs cite exists.

A citation is a Markdown file name (``docs/vbench.md``, ``method.md``), optionally followed by section
references (``§5``, ``§4.4–4.5``, ``§2.3, §3.2``, ``§5, 'What is downloaded at runtime'``); a ``§`` with no
page before it refers to the page it is written on (docs only). Paths under ``pisces_cli/``, ``benchmarks/``,
``recipes/``, ``docs/`` and ``tests/`` and relative Markdown links must exist too. The team's private notes are
never cited: users do not have them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
#: Markdown names that are files pisces writes, not pages one could read in the repository.
WRITTEN_FILES = {"report.md", "gpu-results.md"}
#: repository paths that a command writes (make gpu-check), not files kept in the repository.
WRITTEN_PATHS = {"benchmarks/gpu-results.json", "benchmarks/gpu-results.md"}
#: the team's private notes and machine paths: never cited (users do not have them).
FORBIDDEN = re.compile(r"/work/[^\s`'\")]*|\.\./shared[^\s`'\")]*|shared/docs[^\s`'\")]*")
DOC = re.compile(r"(?<![\w/.-])((?:\.\./|\./)?(?:[\w-]+/)*[\w-]+\.md)\b")
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*[a-z]?)(?:\s*[–-]\s*(\d+(?:\.\d+)*[a-z]?))?")
#: what may sit between a page and one of its section references: spaces, separators and other references.
GAP = re.compile(r"^(?:[\s,;()`'\"]|and|§\s*\d+(?:\.\d+)*(?:\s*[–-]\s*\d+(?:\.\d+)*)?)*$")
NAMED = re.compile(r"^,\s*['\"]([^'\"]+)['\"]")
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:pisces_cli|benchmarks|recipes|tests)/[\w./-]*[\w-]\.(?:py|yaml|json|txt))"
)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def sources() -> list[Path]:
    files = [*ROOT.joinpath("pisces_cli").rglob("*.py"), *ROOT.joinpath("recipes").glob("*.yaml")]
    files += [*ROOT.joinpath("benchmarks").glob("*.py"), ROOT / "benchmarks" / "RESULTS.md"]
    files += [ROOT / "README.md", ROOT / "CHANGELOG.md", *ROOT.joinpath("docs").rglob("*.md")]
    return sorted(f for f in files if f.is_file() and "__pycache__" not in f.parts)


def joined(text: str) -> str:
    """``text`` with line breaks (and the comment markers that continue a sentence) made spaces."""
    return re.sub(r"[ \t]*\n[ \t]*(?:#(?!#)[ \t]?)?", " ", text)


def resolve(name: str, cited_from: Path) -> Path | None:
    """The repository file a cited page name points to: relative to the citing file, the root, or docs/."""
    for base in (cited_from.parent, ROOT, ROOT / "docs"):
        candidate = (base / name).resolve()
        if candidate.is_file() and ROOT in candidate.parents:
            return candidate
    return None


@cache
def sections(page: Path) -> dict[str, str]:
    """Section number → heading text of a Markdown page (``## 4. Token OT`` → ``{"4": "Token OT"}``)."""
    found = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s+(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def headings(page: Path) -> list[str]:
    return [
        line.lstrip("#").strip()
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    ]


@dataclass
class Problem:
    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}: {self.what}"


def check_file(path: Path) -> list[Problem]:
    return check_text(path.read_text(encoding="utf-8"), path)


def check_text(raw: str, path: Path) -> list[Problem]:
    """The broken citations of ``raw``, the text of the repository file ``path`` (which may not exist)."""
    text = joined(raw)
    problems = [
        Problem(path, f"a path outside the repository: {m.group(0)!r}") for m in FORBIDDEN.finditer(raw)
    ]
    citations = []  # (end offset, page or None)
    for match in DOC.finditer(text):
        name = match.group(1)
        if Path(name).name in WRITTEN_FILES or re.search(r"https?://\S*$", text[: match.start()]):
            continue
        page = resolve(name, path)
        if page is None:
            problems.append(Problem(path, f"cites {name}, which is not in the repository"))
        citations.append((match.end(), page))
    for match in SECTION.finditer(text):
        before = [
            (end, page)
            for end, page in citations
            if end <= match.start() and GAP.match(text[end : match.start()])
        ]
        if before:
            page = before[-1][1]
            if page is None:
                continue  # already reported
        elif path.suffix == ".md" and path.parent.name == "docs":
            page = path  # a section of this page
        else:
            problems.append(
                Problem(
                    path, f"{match.group(0)!r} names no page (write e.g. docs/method.md {match.group(0)})"
                )
            )
            continue
        for number in filter(None, match.groups()):
            if number not in sections(page):
                problems.append(
                    Problem(path, f"cites {page.relative_to(ROOT)} §{number}, which has no such section")
                )
        named = NAMED.match(text[match.end() :])
        if named and not any(named.group(1) in heading for heading in headings(page)):
            problems.append(
                Problem(path, f"cites {page.relative_to(ROOT)} section {named.group(1)!r}, which it lacks")
            )
    for match in REPO_PATH.finditer(raw):
        if match.group(1) not in WRITTEN_PATHS and not (ROOT / match.group(1)).exists():
            problems.append(Problem(path, f"names {match.group(1)}, which is not in the repository"))
    if path.suffix == ".md":
        for match in LINK.finditer(raw):
            target = match.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                problems.append(Problem(path, f"links to {target}, which does not exist"))
    return problems


def test_the_docs_folder_has_the_promised_pages():
    for page in ("recipes.md", "artifacts.md", "method.md", "vbench.md", "backbones.md", "internvideo2.md"):
        assert (ROOT / "docs" / page).is_file(), page
        assert sections(ROOT / "docs" / page), f"docs/{page} has no numbered sections"


def test_every_cited_page_section_and_path_exists():
    problems = [str(p) for path in sources() for p in check_file(path)]
    assert not problems, "broken citations:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see docs/method.md §4.4 for the cost", []),
        ("see docs/method.md §4.4–4.5 and §9.5", []),
        ("see docs/vbench.md §5, 'What is downloaded at runtime'", []),
        ("see docs/vbench.md §5, 'What is uploaded'", ["section 'What is uploaded'"]),
        ("see docs/method.md §42", ["no such section"]),
        ("see docs/backbones.md §5b", ["no such section"]),
        ("see docs/nothing.md", ["not in the repository"]),
        ("see VBench §6", ["names no page"]),
        ("(method.md §2.3)", []),
        ("facts from /work/shared/docs/method.md", ["outside the repository"]),
        ("written to run/report.md", []),
        ("the code in pisces_cli/no_such_module.py", ["pisces_cli/no_such_module.py"]),
    ],
)
def test_the_checker_catches_what_it_should(text, expected):
    """The checker itself: correct citations pass, each kind of broken one is reported."""
    found = [str(p) for p in check_text(f'"""{text}."""\n', ROOT / "pisces_cli" / "probe.py")]
    assert len(found) == len(expected), found
    for problem, needle in zip(found, expected, strict=True):
        assert needle in problem, problem
