"""The pending fault switches of the sandbox's SMTP server (see :class:`~.smtp_server.SmtpServer`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Throttle:
    """A pending :meth:`SmtpServer.throttle`."""

    reply: str
    command: str
    seconds: float | None
    """How long it lasts once started, or ``None``."""
    remaining: int | None
    """Replies left to give, or ``None``."""
    starts_at: int
    """Total of accepted messages from which it applies."""
    until: float | None = None
    """``time.monotonic()`` at which it ends; set when it starts."""

    def applies(self, accepted_total: int, now: float) -> bool:
        """Tell whether it is in force now (starting it if its time has come)."""
        if accepted_total < self.starts_at:
            return False
        if self.seconds is not None and self.until is None:
            self.until = now + self.seconds
        return (self.until is None or now < self.until) and (self.remaining is None or self.remaining > 0)

    def over(self, now: float) -> bool:
        return (self.until is not None and now >= self.until) or (self.remaining is not None and self.remaining <= 0)


@dataclass
class EveryN:
    """A fault due after every ``every`` accepted messages, ``remaining`` more times."""

    every: int
    remaining: int
    due: int
    """Total of accepted messages at which it is next due."""

    def fire(self, accepted_total: int) -> bool:
        """Tell whether it is due now; if so, count it and schedule the next one."""
        if accepted_total < self.due:
            return False
        self.remaining -= 1
        self.due = accepted_total + self.every
        return True


@dataclass
class DisconnectPlan(EveryN):
    """A pending :meth:`SmtpServer.disconnect_after`."""

    reply: str = ""


@dataclass
class StallPlan(EveryN):
    """A pending :meth:`SmtpServer.stall_after`."""

    seconds: float = 0.0
    command: str = "content"
