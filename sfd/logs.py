"""Structured logs: JSON lines under systemd, a readable console on a TTY, secrets redacted."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import msgspec
import structlog

from sfd.domain.tokens import TOKEN_PATTERN, TOKEN_PREFIX

REDACTED = "[redacted]"

_encoder = msgspec.json.Encoder()


def _json_line(event: Any, **_: Any) -> str:
    """One log line: msgspec writes JSON several times faster than the standard library."""
    try:
        return _encoder.encode(event).decode()
    except TypeError:  # a value msgspec cannot encode: say what it is rather than fail
        return _encoder.encode(
            {k: v if _encodable(v) else repr(v) for k, v in event.items()}
        ).decode()


def _encodable(value: Any) -> bool:
    try:
        _encoder.encode(value)
    except TypeError:
        return False
    return True


class SecretRedactor:
    """Replaces every configured secret and every API token wherever it appears in an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """The text with every secret and token replaced."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return TOKEN_PATTERN.sub(REDACTED, text) if TOKEN_PREFIX in text else text

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if isinstance(value, BaseException):
            return self.redact(f"{type(value).__name__}: {value}")
        return value

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return {key: self._clean(value) for key, value in event.items()}


class _StdlibBridge(logging.Handler):
    """Hands standard-library log records to structlog, so every line is one JSON object."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = structlog.get_logger().bind(logger=record.name)
        logger.log(record.levelno, record.getMessage(), exc_info=record.exc_info or False)


class _RedactingStream:
    """A last guard on the rendered line: tracebacks are rendered after the processors ran."""

    def __init__(self, stream: TextIO, redactor: SecretRedactor) -> None:
        self.stream = stream
        self.redactor = redactor

    def write(self, text: str) -> int:
        # A log line that cannot be written (stdout closed, a broken pipe) must never break
        # the request or the loop that logged it.
        try:
            return self.stream.write(self.redactor.redact(text))
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


def configure_logging(
    log_format: str = "auto",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Set up structlog for the whole process."""
    out = stream or sys.stdout
    redactor = SecretRedactor(secrets)
    console = log_format == "console" or (log_format == "auto" and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        processors += [redactor, structlog.dev.ConsoleRenderer(colors=out.isatty())]
    else:
        processors += [
            structlog.processors.dict_tracebacks,
            redactor,
            structlog.processors.JSONRenderer(serializer=_json_line),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(
            file=_RedactingStream(out, redactor)  # type: ignore[arg-type]
        ),
        cache_logger_on_first_use=False,
    )
    # aiohttp, asyncio and aiosqlite log through the standard library: same lines, same format.
    root = logging.getLogger()
    root.handlers = [_StdlibBridge()]
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level.upper()]))


def get_logger(**context: Any) -> structlog.stdlib.BoundLogger:
    """A logger bound to `context` (e.g. channel=..., order=...), configured when first used."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(**context)
    return logger
