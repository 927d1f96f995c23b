"""systemd's notify protocol over $NOTIFY_SOCKET: one datagram per message, no library needed."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger()


class SystemdNotifier:
    """Sends READY, STATUS, WATCHDOG and STOPPING to systemd when it asked for them."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # '@' names a socket in the abstract namespace: its real name starts with a NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval: float | None = int(usec) / 2_000_000 if watchdog else None
        """Half the watchdog timeout, in seconds, when systemd runs a watchdog for us."""

    @property
    def enabled(self) -> bool:
        """Whether systemd listens."""
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines in one datagram; never raise, since systemd is optional."""
        if not self.address:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message.encode(), self.address)
        except OSError as exc:
            log.warning("systemd_notify_failed", reason=exc.strerror or str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        """The service is up."""
        return self.send(ready=1, status=status)

    def status(self, status: str) -> bool:
        """A one-line summary for `systemctl status`."""
        return self.send(status=status)

    def watchdog(self) -> bool:
        """Every loop made progress: keep the watchdog from restarting us."""
        return self.send(watchdog=1)

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.send(stopping=1, status="stopping")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
