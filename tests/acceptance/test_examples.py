"""Every example in examples/ runs as its header says — ``psql -f`` for a .sql file, ``python``
for a .py file — against a fresh database with a worker, and prints what its last comment
says it prints (the last lines of its output, as ``psql -At`` or Python print them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pg_durable.embedded import installations
from tests.fixtures.engine import WorkerThread

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.iterdir() if re.fullmatch(r"\d\d_\w+\.(sql|py)", p.name))
EXPECTED = {".sql": "-- Expected output", ".py": "# Expected output"}


def expected_output(path: Path) -> list[str]:
    """The lines of the comment block that closes the file, after its "Expected output" line."""
    lines = path.read_text(encoding="utf-8").rstrip("\n").splitlines()
    marker = EXPECTED[path.suffix]
    starts = [i for i, line in enumerate(lines) if line.startswith(marker)]
    assert len(starts) == 1, f"{path.name}: one line starting with {marker!r}"
    comment = marker.split(" ")[0]
    block = lines[starts[0] + 1 :]
    assert block and all(line.startswith(comment) for line in block), path.name
    return [line[len(comment) + 1 :] for line in block]


def psql() -> str:
    for installation in installations():
        candidate = installation.bin_dir / "psql"
        if candidate.exists():
            return str(candidate)
    pytest.skip("no psql on this machine")


@pytest.fixture
def example_api() -> Iterator[str]:
    """examples/http_server.py on a free port; its base URL."""
    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / "http_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(r"serving on (http://127\.0\.0\.1:\d+)\n", line)
            assert match, line
            yield match.group(1)
        finally:
            proc.terminate()


def test_every_example_states_its_output_and_is_listed() -> None:
    assert len(SCRIPTS) >= 12
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for path in SCRIPTS:
        assert expected_output(path), path.name
        assert f"({path.name})" in readme, f"{path.name} is not in examples/README.md"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example(
    path: Path, dsn: str, worker: WorkerThread, request: pytest.FixtureRequest
) -> None:
    if path.suffix == ".sql":
        command = [psql(), dsn, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        if "base_url" in path.read_text(encoding="utf-8"):
            command += ["-v", f"base_url={request.getfixturevalue('example_api')}"]
        command += ["-f", str(path)]
    else:
        command = [sys.executable, str(path)]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PG_DURABLE_DSN": dsn},
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout}\n{proc.stderr}"
    expected = expected_output(path)
    printed = proc.stdout.rstrip("\n").splitlines()
    assert printed[-len(expected) :] == expected, proc.stdout
