"""Failures a sandbox is told to serve next: shared by the fake marketplace and the fake shop."""

from __future__ import annotations

from typing import Protocol, TypeVar


class Planned(Protocol):
    """A failure planned for the next `remaining` calls of `operation` (None: any call)."""

    remaining: int
    operation: str | None


F = TypeVar("F", bound=Planned)


def take_failure(planned: list[F], operation: str | None) -> F | None:
    """The failure this call gets, if any; one used up is taken off the list."""
    for failure in planned:
        if failure.operation is None or failure.operation == operation:
            failure.remaining -= 1
            if failure.remaining <= 0:
                planned.remove(failure)
            return failure
    return None
