"""The reliability table: each fault or attack, how often it was tried, what was lost and what
was duplicated, as the test suite recorded them in `var/reliability.json`.

    .venv/bin/pytest -q tests/faults tests/test_crash.py tests/test_worker_crash.py
    .venv/bin/python bench/reliability_table.py            # print the markdown table
    .venv/bin/python bench/reliability_table.py --write    # and put it in docs/reliability.md

`--write` replaces what lies between the `reliability-table` markers of docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "var" / "reliability.json"
PAGE = ROOT / "docs" / "reliability.md"
START = "<!-- reliability-table:start -->"
END = "<!-- reliability-table:end -->"
#: Groups in the order the page shows them.
GROUPS = ("marketplace fault", "shop fault", "storage", "storage fault", "hostile input", "crash")


def render(document: dict[str, Any]) -> str:
    """The markdown table, with the run it comes from."""
    rows = sorted(
        document.get("rows", []),
        key=lambda r: (
            GROUPS.index(r["group"]) if r["group"] in GROUPS else len(GROUPS),
            r["fault"],
        ),
    )
    lines = [
        "| fault or attack | kind | tried | lost | duplicated | test |",
        "|---|---|--:|--:|--:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fault']} | {r['group']} | {r['tries']:,} | {r['lost']} | {r['duplicated']} "
            f"| `{r['test']}` |"
        )
    total = sum(r["tries"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    duplicated = sum(r["duplicated"] for r in rows)
    lines.append(f"| **all {len(rows)}** | | **{total:,}** | **{lost}** | **{duplicated}** | |")
    commit = document.get("commit") or "an uncommitted tree"
    lines += ["", f"Recorded {document.get('written_at', '?')} at commit {commit}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--write", action="store_true", help=f"update {PAGE.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if not args.source.exists():
        sys.stderr.write(f"{args.source}: no figures yet; run the fault and crash tests first\n")
        return 1
    table = render(json.loads(args.source.read_text(encoding="utf-8")))
    sys.stdout.write(table)
    if args.write:
        page = PAGE.read_text(encoding="utf-8")
        head, start, rest = page.partition(START)
        _, end, tail = rest.partition(END)
        if not start or not end:
            sys.stderr.write(f"{PAGE}: the {START} and {END} markers are missing\n")
            return 1
        PAGE.write_text(f"{head}{START}\n{table}{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
