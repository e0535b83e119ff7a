"""The documentation's examples run: every ```python and ```bash block of README.md and docs/*.md.

The blocks are read from the Markdown when the tests are collected, never copied here, so an
example is tested exactly as a reader sees it. Each Python block runs in a fresh interpreter
(``sys.executable -c``), each shell block with ``bash`` under ``set -e`` (the venv's ``bin``,
which has ``python`` and ``ms-droplet``, first on ``PATH``), both in an empty temporary
directory. A failure names the file, the block's line and shows the block and its output.

A block that cannot run here is marked in the Markdown on the line(s) right before its fence:

    <!-- example: not run (needs a GPU) -->      skipped, listed with its reason (kept few)
    <!-- example: slow (a 5-minute model run) -->  runs only under ``pytest -m slow``

Anything that is not code for a reader to run (a command synopsis, an output listing) is
fenced as ```text; a fence without a language is refused, so nothing escapes by accident.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ("python", "bash")  # fence languages that are executed
# Fence languages that would look runnable but are not executed: write ```python / ```bash
# (to run it) or ```text (not code).
REFUSED = {"", "py", "python3", "pycon", "sh", "shell", "console", "zsh", "ipython"}
MARKER = re.compile(r"<!--\s*example:\s*(?P<body>.*?)\s*-->")
MARKER_BODY = re.compile(r"(?P<kind>not run|slow)\s*\((?P<reason>.*)\)\s*$")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`{]*)")
MAX_NOT_RUN = 5  # the skips must stay a short, explained list
BLOCK_TIMEOUT_S = 900
OUTPUT_TAIL = 6000


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    kind: str = "run"  # "run", "not run" or "slow"
    reason: str = ""

    @property
    def where(self) -> str:
        return _rel(self.path)

    @property
    def id(self) -> str:
        return f"{self.where}:{self.line}:{self.lang}"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return path.name


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of one Markdown file, and what is malformed in it."""
    blocks: list[Block] = []
    problems: list[str] = []
    name = _rel(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    pending: tuple[int, str, str] | None = None  # (line, kind, reason) of the last marker
    i = 0
    while i < len(lines):
        text = lines[i]
        marker = MARKER.search(text)
        if marker:
            if pending:
                problems.append(f"{name}:{pending[0]}: example marker not followed by a block")
            body = MARKER_BODY.match(marker.group("body"))
            if not body or not body.group("reason").strip():
                problems.append(
                    f"{name}:{i + 1}: malformed marker {marker.group(0)!r}; write "
                    "<!-- example: not run (why) --> or <!-- example: slow (why) -->"
                )
                pending = None
            else:
                pending = (i + 1, body.group("kind"), body.group("reason").strip())
            i += 1
            continue
        fence = FENCE.match(text)
        if not fence:
            if text.strip() and pending:
                problems.append(f"{name}:{pending[0]}: example marker not right before a block")
                pending = None
            i += 1
            continue
        indent, chars, lang = fence.group("indent"), fence.group("fence"), fence.group("lang")
        start = i
        body_lines: list[str] = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(chars) and not close.strip(chars[0]):
                break
            line = lines[i]
            body_lines.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        else:
            problems.append(f"{name}:{start + 1}: fence never closed")
        i += 1
        lang = lang.lower()
        if lang in REFUSED:
            problems.append(
                f"{name}:{start + 1}: fence language {lang or '(none)'!r}: use ```python or "
                "```bash for an example that runs, ```text for anything that is not code"
            )
        kind, reason = "run", ""
        if pending:
            _, kind, reason = pending
            pending = None
            if lang not in RUN:
                problems.append(
                    f"{name}:{start + 1}: example marker before a ```{lang} block, which "
                    "is never run"
                )
        if lang in RUN:
            code = "\n".join(body_lines) + "\n"
            blocks.append(Block(path, start + 1, lang, code, kind, reason))
    if pending:
        problems.append(f"{name}:{pending[0]}: example marker not followed by a block")
    return blocks, problems


def collect() -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    for path in doc_files():
        found, bad = parse(path)
        blocks += found
        problems += bad
    return blocks, problems


BLOCKS, PROBLEMS = collect()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # python and ms-droplet of this environment
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


def run_block(block: Block, cwd: Path, timeout: float = BLOCK_TIMEOUT_S) -> float:
    """Runs one block; fails the test with its place, the block and its output. Returns seconds."""
    if block.lang == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-c", "set -e\n" + block.code]
    start = time.monotonic()
    # Its own process group, so that a timeout also ends the builder and runner workers.
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        rc: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        rc = f"timeout after {timeout:.0f} s"
    secs = time.monotonic() - start
    if rc != 0:
        pytest.fail(
            f"{block.where}:{block.line}: the ```{block.lang} example failed "
            f"(exit {rc}, {secs:.0f} s)\n--- the block ---\n{block.code}"
            f"--- its output (last {OUTPUT_TAIL} characters) ---\n{output[-OUTPUT_TAIL:]}",
            pytrace=False,
        )
    return secs


def _params():
    for block in BLOCKS:
        marks = [pytest.mark.slow] if block.kind == "slow" else []
        yield pytest.param(block, id=block.id, marks=marks)


def test_markdown_fences_and_markers_are_well_formed():
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert any(b.lang == "python" for b in BLOCKS) and any(b.lang == "bash" for b in BLOCKS)


def test_skipped_examples_are_few_and_explained():
    """The not-run list is short, each with its reason, and each still parses."""
    skipped = [b for b in BLOCKS if b.kind == "not run"]
    listing = "\n".join(f"  {b.id}: {b.reason}" for b in skipped)
    print(f"examples not run ({len(skipped)}):\n{listing}")
    assert len(skipped) <= MAX_NOT_RUN, f"too many examples not run:\n{listing}"
    for block in skipped:
        assert len(block.reason) >= 10, f"{block.id}: say why it is not run"
        if block.lang == "python":
            compile(block.code, block.id, "exec")
        else:
            check = subprocess.run(["bash", "-n", "-c", block.code], capture_output=True, text=True)
            assert check.returncode == 0, f"{block.id}: {check.stderr}"


@pytest.mark.parametrize("block", list(_params()))
def test_example_runs(block: Block, tmp_path):
    if block.kind == "not run":
        pytest.skip(f"{block.where}:{block.line}: not run ({block.reason})")
    run_block(block, tmp_path)


def test_a_broken_example_fails_with_its_place(tmp_path):
    """The harness catches a failing block: a real example with a typo, and bash's ``set -e``."""
    first = next(b for b in BLOCKS if b.lang == "python" and b.kind == "run")
    broken = Block(first.path, first.line, "python", "import ms_dropletx\n" + first.code)
    with pytest.raises(pytest.fail.Exception) as failed:
        run_block(broken, tmp_path, timeout=120)
    message = str(failed.value)
    assert f"{first.where}:{first.line}: the ```python example failed" in message
    assert "ModuleNotFoundError" in message and "ms_dropletx" in message

    doc = tmp_path / "broken.md"
    doc.write_text("text\n\n```bash\necho before\nfalse\necho after\n```\n", encoding="utf-8")
    (block,), problems = parse(doc)
    assert not problems and block.line == 3
    with pytest.raises(pytest.fail.Exception) as failed:
        run_block(block, tmp_path, timeout=60)
    message = str(failed.value)
    assert "broken.md:3: the ```bash example failed (exit 1" in message
    assert "before" in message and "after" not in message.split("--- its output")[1]


def test_markers_are_parsed(tmp_path):
    doc = tmp_path / "marked.md"
    doc.write_text(
        "<!-- example: not run (needs a GPU) -->\n```python\nimport cuda\n```\n\n"
        "<!-- example: slow (a long run) -->\n\n   ```bash\n   sleep 600\n   ```\n"
        "```\nbare\n```\n<!-- example: skip -->\n```text\nx\n```\n",
        encoding="utf-8",
    )
    blocks, problems = parse(doc)
    assert [(b.line, b.lang, b.kind, b.reason) for b in blocks] == [
        (2, "python", "not run", "needs a GPU"),
        (8, "bash", "slow", "a long run"),
    ]
    assert blocks[1].code == "sleep 600\n"
    assert len(problems) == 2
    assert "marked.md:11: fence language '(none)'" in problems[0]
    assert "marked.md:14: malformed marker" in problems[1]
