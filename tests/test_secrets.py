"""Secrets and tokens never appear in a log line or in the CLI's output."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import structlog

from sfd.logs import REDACTED, SecretRedactor, configure_logging
from sfd.sandbox.marketplace import channel_toml
from tests.support import SfdProcess, run_cli, write_config

API_KEY = "mk-94f1e2d3c4b5a697"
FILE_KEY = "mk-file-5e6f7a8b9c0d"


def test_the_redactor_replaces_secrets_and_tokens_everywhere() -> None:
    token = "sfd_" + "A" * 43
    redactor = SecretRedactor([API_KEY, "short"])
    event = redactor(
        None,
        "info",
        {
            "event": "poll_failed",
            "reason": f"401 for key {API_KEY}",
            "nested": {"headers": [f"Authorization: {API_KEY}", f"Bearer {token}"]},
            "error": ValueError(f"bad {token}"),
            "count": 3,
        },
    )
    assert event["reason"] == f"401 for key {REDACTED}"
    assert event["nested"] == {"headers": [f"Authorization: {REDACTED}", f"Bearer {REDACTED}"]}
    assert event["error"] == f"ValueError: bad {REDACTED}"
    assert event["count"] == 3


def test_json_logs_carry_event_level_timestamp_and_no_secret() -> None:
    out = io.StringIO()
    configure_logging("json", "info", [API_KEY], stream=out)
    log = structlog.get_logger(channel="decathlon")
    log.info("poll_failed", reason=f"HTTP 401 with key {API_KEY}")
    try:
        raise RuntimeError(f"boom {API_KEY}")
    except RuntimeError:
        log.exception("crashed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["poll_failed", "crashed"]
    assert lines[0]["channel"] == "decathlon" and lines[0]["level"] == "info"
    assert API_KEY not in out.getvalue()
    assert REDACTED in lines[0]["reason"]


def test_no_secret_reaches_the_logs_or_the_cli(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    key_file = tmp_path / "leroy.key"
    key_file.write_text(FILE_KEY + "\n")
    body = channel_toml(
        f"http://127.0.0.1:9/{API_KEY}", "env:DECA_KEY", name="decathlon"
    ) + channel_toml("http://127.0.0.1:9", f"file:{key_file}", name="leroymerlin")
    config = write_config(tmp_path, body)
    env = {"DECA_KEY": API_KEY}
    sfd = sfd_processes(config, tmp_path, env=env)
    sfd.wait_ready()
    outputs = [
        run_cli(config, "check-config", env=env),
        run_cli(config, "channels", env=env),
        run_cli(config, "channels", "--json", env=env),
        run_cli(config, "orders", "list", env=env),
        run_cli(config, "token", "list", env=env),
    ]
    assert sfd.terminate() == 0
    log = sfd.log_text()
    assert "poll_failed" in log, "the channels' failures should have been logged"
    captured = log + "".join(o.stdout + o.stderr for o in outputs)
    assert API_KEY not in captured
    assert FILE_KEY not in captured
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]


def test_standard_library_logs_become_json_lines_too() -> None:
    import logging

    out = io.StringIO()
    configure_logging("json", "info", [API_KEY], stream=out)
    logging.getLogger("aiohttp.server").error("Error handling request with key %s", API_KEY)
    [line] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["level"] == "error"
    assert line["logger"] == "aiohttp.server"
    assert line["event"] == f"Error handling request with key {REDACTED}"
