"""The real `sfd run` process: systemd notify, signals, restarts, and refusals at start-up."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import SfdProcess, run_cli, write_config

Start = Callable[..., SfdProcess]


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_ready_then_healthz_then_sigterm_stops_cleanly(
    tmp_path: Path, sfd_processes: Start
) -> None:
    sfd = sfd_processes(write_config(tmp_path), tmp_path)
    sfd.wait_ready()
    assert any(n.startswith("STATUS=0 channels, 0 orders to process") for n in sfd.notifications)
    status, body = get_json(sfd.url + "/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert set(body["loops"]) == {"operations-worker", "deadline-watch", "retention"}
    assert body["loops"]["retention"]["detail"]["retention_days"] == 30
    assert body["loops"]["deadline-watch"]["state"] in {"idle", "busy"}

    sfd.proc.send_signal(signal.SIGTERM)
    sfd.wait_for_notification("STOPPING=1", timeout=10)
    assert sfd.proc.wait(10) == 0
    events = [e["event"] for e in sfd.log_events()]
    assert events[-3:] == ["signal_received", "daemon_stopping", "daemon_stopped"]


def test_log_lines_are_json_objects_with_event_level_and_timestamp(
    tmp_path: Path, sfd_processes: Start
) -> None:
    sfd = sfd_processes(write_config(tmp_path), tmp_path)
    sfd.wait_ready()
    assert sfd.terminate() == 0
    lines = sfd.log_text().splitlines()
    assert lines, "sfd logged nothing"
    for line in lines:
        event = json.loads(line)
        assert {"event", "level", "timestamp"} <= set(event)
        assert event["timestamp"].endswith("Z")


def test_an_abstract_notify_socket_and_the_watchdog_are_served(
    tmp_path: Path, sfd_processes: Start
) -> None:
    sfd = sfd_processes(
        write_config(tmp_path), tmp_path, abstract=True, env={"WATCHDOG_USEC": "2000000"}
    )
    sfd.wait_ready()
    sfd.wait_for_notification("WATCHDOG=1", timeout=5)
    assert sfd.terminate() == 0


def test_a_restart_keeps_every_row(tmp_path: Path, sfd_processes: Start) -> None:
    config = write_config(tmp_path)
    first = sfd_processes(config, tmp_path)
    first.wait_ready()
    created = run_cli(config, "token", "create", "--store", "1", "--name", "woo")
    assert created.returncode == 0, created.stderr
    assert first.terminate() == 0

    second = sfd_processes(config, tmp_path)
    second.wait_ready()
    listed = run_cli(config, "token", "list", "--json")
    assert [t["name"] for t in json.loads(listed.stdout)] == ["woo"]
    assert second.terminate() == 0


def test_a_port_in_use_exits_1_with_one_line(tmp_path: Path, sfd_processes: Start) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sfd = sfd_processes(write_config(tmp_path, listen=f"127.0.0.1:{port}"), tmp_path)
        assert sfd.proc.wait(15) == 1
    reason = f"sfd: cannot listen on 127.0.0.1:{port}: address already in use"
    assert reason in sfd.log_text().splitlines()
    assert "READY=1" not in sfd.notifications


def test_a_database_that_cannot_be_written_exits_1(tmp_path: Path, sfd_processes: Start) -> None:
    config = tmp_path / "sfd.toml"
    config.write_text(
        '[daemon]\ndatabase = "/proc/sfd/sfd.db"\nlisten = "127.0.0.1:0"\nlog_format = "json"\n'
    )
    sfd = sfd_processes(config, tmp_path)
    assert sfd.proc.wait(15) == 1
    assert (
        "sfd: database directory /proc/sfd cannot be created: No such file or directory"
        in sfd.log_text().splitlines()
    )


def test_a_second_daemon_on_the_same_database_refuses_to_start(
    tmp_path: Path, sfd_processes: Start
) -> None:
    config = write_config(tmp_path)
    first = sfd_processes(config, tmp_path)
    first.wait_ready()
    second = sfd_processes(config, tmp_path)
    assert second.proc.wait(15) == 1
    assert f"already used by a running sfd (pid {first.proc.pid})" in second.log_text()
    status, _ = get_json(first.url + "/healthz")
    assert status == 200
    assert first.terminate() == 0


def test_a_second_interrupt_exits_at_once(tmp_path: Path, sfd_processes: Start) -> None:
    sfd = sfd_processes(write_config(tmp_path), tmp_path)
    sfd.wait_ready()
    sfd.proc.send_signal(signal.SIGINT)
    sfd.proc.send_signal(signal.SIGINT)
    assert sfd.proc.wait(10) in {0, 130}
