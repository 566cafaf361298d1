"""The repository stands alone: nothing tracked refers to a path outside it.

A clone must build, test and read on its own, so every tracked text file (code, tests, docs, scripts,
configs) is scanned for:

* the workplace's shared folder (its vectors, docs and hooks) and absolute paths under the workplace root;
* Python paths built from ``__file__`` that climb above the repository root (``Path(__file__).parents[k]``,
  ``.parent`` chains, ``/ ".."``, ``os.path.dirname`` chains);
* shell paths built from ``$(dirname "$0")`` that climb above the root;
* Markdown links whose relative target is missing or outside the repository;
* mentions of an upper-case Markdown document name (``[A-Z]*.md``) that is not a tracked file.

The checks are plain functions over a root and a list of files, so the tests below also prove that each
of them fires on a planted reference.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "data" / "vectors"

# Spelled in pieces so that this file can scan itself without matching its own patterns.
_SHARED = "shar" + "ed"
_WORKPLACE = "/" + "work/"
FORBIDDEN = [
    (re.compile(r"\.\./" + _SHARED + r"\b"), "the shared folder beside the repository"),
    (re.compile(r"\b" + _SHARED + r"/(vectors|docs|hooks|lib)\b"), "the shared folder beside the repository"),
    (re.compile(r"(?<![\w.])" + re.escape(_WORKPLACE)), "an absolute path under the workplace root"),
]
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")
DOC_NAME = re.compile(r"\b([A-Z][A-Z0-9_-]*\.md)\b")
SH_DIRNAME = re.compile(r"""\$\(\s*dirname\s+"?\$(?:0|\{BASH_SOURCE(?:\[0\])?\})"?\s*\)((?:/\.\.)+)""")


#: Never part of the repository, when it is not a git checkout (an unpacked archive) and files are walked.
UNTRACKED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", "build"}


def tracked_files(root: Path) -> list[Path]:
    """Tracked files of the git work tree at ``root`` (relative paths); every file if it is no checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"], check=True, capture_output=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return [
            path.relative_to(root)
            for path in root.rglob("*")
            if path.is_file()
            and not UNTRACKED_DIRS.intersection(path.relative_to(root).parts)
            and not any(part.endswith(".egg-info") for part in path.relative_to(root).parts)
        ]
    return [Path(p) for p in out.split("\0") if p]


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _levels_up(node: ast.expr) -> int | None:
    """How many directories above ``__file__`` the path expression ``node`` points, or None if unrelated.

    Understands ``Path(__file__)`` (``.resolve()``/``.absolute()``), ``.parent``, ``.parents[k]``,
    ``/ ".."`` and ``os.path.dirname(...)`` nesting. The file itself is level 0, its folder level 1.
    """
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("Path", "PurePath", "PosixPath") and node.args:
            arg = node.args[0]
            return 0 if isinstance(arg, ast.Name) and arg.id == "__file__" else _levels_up(arg)
        if name in ("resolve", "absolute", "abspath", "realpath") and isinstance(func, ast.Attribute):
            inner = func.value if name in ("resolve", "absolute") else (node.args[0] if node.args else None)
            return _levels_up(inner) if inner is not None else None
        if name == "dirname" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Name) and arg.id == "__file__":
                return 1
            inner = _levels_up(arg)
            return None if inner is None else inner + 1
        return None
    if isinstance(node, ast.Name) and node.id == "__file__":
        return 0
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        inner = _levels_up(node.value)
        return None if inner is None else inner + 1
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
        if node.value.attr == "parents" and isinstance(node.slice, ast.Constant):
            inner = _levels_up(node.value.value)
            if inner is not None and isinstance(node.slice.value, int):
                return inner + node.slice.value + 1
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        inner = _levels_up(node.left)
        if inner is None or not isinstance(node.right, ast.Constant) or not isinstance(node.right.value, str):
            return inner
        for part in PurePosixPath(node.right.value).parts:
            inner += 1 if part == ".." else -1
        return inner
    return None


def _python_escapes(rel: Path, text: str) -> list[str]:
    depth = len(rel.parts)  # levels from the file up to the repository root
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        return [f"{rel}:{exc.lineno}: does not parse: {exc.msg}"]
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.expr):
            continue
        up = _levels_up(node)
        if up is not None and up > depth:
            problems.append(
                f"{rel}:{node.lineno}: path built from __file__ climbs {up - depth} above the root"
            )
    return sorted(set(problems))


def scan(root: Path, files: list[Path]) -> list[str]:
    """Every reference to something outside ``root`` in ``files`` (paths relative to ``root``)."""
    names = {f.name for f in files}
    problems: list[str] = []
    for rel in files:
        text = _text(root / rel)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for pattern, what in FORBIDDEN:
                if pattern.search(line):
                    problems.append(f"{rel}:{lineno}: refers to {what}: {line.strip()}")
                    break
            for doc in DOC_NAME.findall(URL.sub("", line)):
                if doc not in names:
                    problems.append(f"{rel}:{lineno}: names {doc}, which is not in the repository")
            if rel.suffix == ".md":
                for target in MD_LINK.findall(line):
                    if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                        continue  # a URL or an in-page anchor
                    path = (root / rel.parent / target.split("#")[0]).resolve()
                    if not path.is_relative_to(root.resolve()) or not path.exists():
                        problems.append(
                            f"{rel}:{lineno}: link to {target} leaves the repository or is missing"
                        )
            if rel.suffix == ".sh" or rel.name == "run":
                for ups in SH_DIRNAME.findall(line):
                    if ups.count("..") > len(rel.parts) - 1:
                        problems.append(f"{rel}:{lineno}: $(dirname $0){ups} climbs above the root")
        if rel.suffix == ".py":
            problems.extend(_python_escapes(rel, text))
    return problems


def test_no_tracked_file_refers_outside_the_repository() -> None:
    files = tracked_files(REPO)
    assert len(files) > 50, "found too few files: not the repository?"
    problems = scan(REPO, files)
    assert not problems, "references outside the repository:\n" + "\n".join(problems)


def test_vector_blobs_hash_to_their_names() -> None:
    blobs = sorted(VECTORS.glob("*/blobs/sha256/*"))
    assert len(blobs) == 10
    for blob in blobs:
        assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == f"sha256:{blob.name}", blob
    for index in VECTORS.glob("*/index.json"):
        for manifest in json.loads(index.read_text())["manifests"]:
            assert (index.parent / "blobs" / "sha256" / manifest["digest"].removeprefix("sha256:")).is_file()


PLANTED = {  # kind: (file, text, what the report must say)
    "vectors": ("tests/conftest.py", 'VECTORS = "../' + _SHARED + '/vectors"\n', "shared folder"),
    "shared docs": ("README.md", "see " + _SHARED + "/docs/X\n", "shared folder"),
    "absolute": ("scripts/x.sh", "cat " + _WORKPLACE + "main/x.txt\n", "workplace root"),
    "parents": (
        "tests/conftest.py",
        "from pathlib import Path\nV = Path(__file__).resolve().parents[1].parent\n",
        "climbs 1 above",
    ),
    "parents index": (
        "tests/fs/t.py",
        "from pathlib import Path\nV = Path(__file__).parents[3] / 'x'\n",
        "climbs 1 above",
    ),
    "dotdot": (
        "tests/t.py",
        "from pathlib import Path\nV = Path(__file__).parent / '..' / '..' / 'x'\n",
        "climbs 1 above",
    ),
    "dirname": (
        "tests/t.py",
        "import os\nV = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))\n",
        "climbs 1 above",
    ),
    "shell": ("scripts/x.sh", 'cd "$(dirname "$0")/../.."\n', "climbs above"),
    "md link": ("docs/notes.md", "[notes](../../notes.txt)\n", "leaves the repository"),
    "dangling doc": ("fs/m.py", '"""Footers (LIMITS' + '.md §1)."""\n', "not in the repository"),
}


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_scan_finds_a_planted_reference(kind: str, tmp_path: Path) -> None:
    rel, text, expected = PLANTED[kind]
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text)
    problems = scan(tmp_path, [Path(rel)])
    assert len(problems) == 1 and expected in problems[0], problems


def test_without_git_every_file_but_caches_is_scanned(tmp_path: Path) -> None:
    for rel in ("fs/a.py", "docs/b.md", ".venv/lib/x.py", "fs/__pycache__/a.pyc"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    assert sorted(tracked_files(tmp_path)) == [Path("docs/b.md"), Path("fs/a.py")]


def test_scan_accepts_paths_inside_the_repository(tmp_path: Path) -> None:
    files = {
        "tests/conftest.py": "from pathlib import Path\nV = Path(__file__).resolve().parents[1] / 'x'\n",
        "tests/fs/t.py": "from pathlib import Path\nR = Path(__file__).parents[2]\nD = R / 'docs'\n",
        "scripts/x.sh": 'cd "$(dirname "$0")/.."\n',
        "docs/a.md": "[b](b.md) [readme](../README.md#x) [web](https://example.org/X.md)\n",
        "docs/b.md": "See [a](a.md).\n",
        "README.md": "x\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert scan(tmp_path, [Path(p) for p in files]) == []
