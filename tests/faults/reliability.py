"""The reliability figures: each fault or attack a test tried, how often, and what it lost or
duplicated. Tests call `record`; at the end of the session `write` merges them into
`var/reliability.json`, which `bench/reliability_table.py` turns into docs/reliability.md's table.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where the figures go; `SFD_RELIABILITY_JSON` moves it (a test of this module does).
OUTPUT = Path(os.environ.get("SFD_RELIABILITY_JSON", ROOT / "var" / "reliability.json"))


@dataclass
class Row:
    """One fault or attack, with its totals over the session."""

    group: str
    fault: str
    tries: int
    lost: int
    duplicated: int
    test: str


RESULTS: dict[tuple[str, str], Row] = {}


def record(group: str, fault: str, *, tries: int, lost: int, duplicated: int, test: str) -> None:
    """Add one test's figures for a fault; the same fault from several tests adds up."""
    key = (group, fault)
    row = RESULTS.get(key)
    if row is None:
        RESULTS[key] = Row(group, fault, tries, lost, duplicated, test)
    else:
        row.tries += tries
        row.lost += lost
        row.duplicated += duplicated


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return ""
    return out.stdout.strip()


def write(path: Path = OUTPUT) -> None:
    """Merge this session's rows into `path`: a partial run updates its own rows only."""
    if not RESULTS:
        return
    rows: dict[tuple[str, str], dict[str, object]] = {}
    if path.exists():
        try:
            for row in json.loads(path.read_text(encoding="utf-8")).get("rows", []):
                rows[(row["group"], row["fault"])] = row
        except (ValueError, KeyError, TypeError):
            rows = {}
    at = datetime.now(UTC).isoformat(timespec="seconds")
    for key, row in RESULTS.items():
        rows[key] = {**asdict(row), "at": at}
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"commit": _commit(), "written_at": at, "rows": list(rows.values())}
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
