"""`sfd demo`, the command `make run` starts: the whole circuit, end to end, within a minute."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.support import ROOT, write_config

CIRCUIT = (
    "order_imported",
    "operation_delivered",
    "shop_imported",
    "shop_shipped",
    "operation_confirmed",
)


def test_the_demo_runs_the_whole_circuit_within_a_minute(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, database="demo.db", stores='[[stores]]\nid = 1\nname = "Demo store"\n'
    )
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sfd", "--config", str(config), "demo"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        shipped: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = [
                json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")
            ]
            shipped = {
                e["order"]: e["event"]
                for e in events
                if e["event"] == "order_status_changed" and e["to_status"] == "shipped"
            }
            # The confirmation is logged just after the status change: wait for both lines.
            confirmed = {e["order"] for e in events if e["event"] == "operation_confirmed"}
            if set(shipped) & confirmed and all(
                any(e["event"] == name for e in events) for name in CIRCUIT
            ):
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert shipped, f"no order shipped within a minute:\n{log.read_text()[-3000:]}"
        assert set(shipped) & confirmed, f"no shipment confirmed:\n{log.read_text()[-3000:]}"
        order = min(set(shipped) & confirmed)
        trail = [e["event"] for e in events if e.get("order") == order]
        assert trail[0] == "order_imported"
        assert "shop_imported" in trail and "shop_shipped" in trail
        assert trail.index("shop_imported") < trail.index("shop_shipped")
        assert "operation_confirmed" in trail[trail.index("shop_shipped") :]
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    text = log.read_text()
    assert "sandbox" in text
    for line in text.splitlines():
        assert line.startswith("{"), f"a log line that is not JSON: {line!r}"
