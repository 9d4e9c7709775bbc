"""Typed errors of the engine's user operations; the HTTP API maps them to status codes."""

from __future__ import annotations


class EngineError(Exception):
    """Base class. ``field`` names the offending input field when there is one."""

    status = 500

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(EngineError):
    status = 400


class NotFound(EngineError):
    status = 404


class Conflict(EngineError):
    status = 409


class ShuttingDown(EngineError):
    status = 503


class IllegalTransition(EngineError):
    """A state machine was asked for a transition its table does not allow; state is unchanged."""

    status = 409


class PayloadTooLarge(EngineError):
    status = 413


class NotLeader(EngineError):
    """This manager is a standby (or lost its lease): it serves no reads or writes."""

    status = 503
