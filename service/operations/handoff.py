"""fd hand-off: single-use, expiring tickets that let a VMM fetch a memfd's fd over a Unix socket.

The REST API issues a ticket; the socket listener redeems it and sends the fd with SCM_RIGHTS.
Tickets live in memory only: the fds they name die with the process anyway.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..backends.protocol import BackendError
from ..domain.errors import DomainError, IdempotencyKeyReused
from .broker import Broker
from .journal import Outcome, RequestMeta, backend_problem, check_if_match


class TicketRefused(DomainError):
    """A ticket that is unknown, already used, or expired; ``code`` says which."""

    code = "ticket-unknown"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True, slots=True)
class Ticket:
    vm_id: str
    memfd_id: str
    expires: float


@dataclass(frozen=True, slots=True)
class HandedOff:
    """What the listener sends along with the fd."""

    fd: int
    size: int
    flags: list[str]


class Tickets:
    """Issued tickets by value; a redeemed or expired one is remembered to say why it is refused."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._live: dict[str, Ticket] = {}
        # Tickets no longer good, with when and why, to tell "used" or "expired" from "unknown".
        self._spent: dict[str, tuple[float, str]] = {}
        # Idempotency-Key -> (fingerprint, answer, expiry): a retried export gets the same ticket.
        self._answers: dict[str, tuple[str | None, dict[str, Any], float]] = {}
        self._lock = threading.Lock()

    def answered(self, meta: RequestMeta) -> dict[str, Any] | None:
        if meta.idempotency_key is None:
            return None
        with self._lock:
            stored = self._answers.get(meta.idempotency_key)
        if stored is None or stored[2] <= self._clock():
            return None
        if stored[0] != meta.fingerprint:
            raise IdempotencyKeyReused(f"Idempotency-Key {meta.idempotency_key!r} was used for a different request")
        return stored[1]

    def remember(self, meta: RequestMeta, answer: dict[str, Any]) -> None:
        if meta.idempotency_key is not None:
            with self._lock:
                self._answers[meta.idempotency_key] = (meta.fingerprint, answer, self._clock() + self.ttl_seconds)

    def issue(self, vm_id: str, memfd_id: str) -> str:
        value = secrets.token_urlsafe(32)
        ticket = Ticket(vm_id, memfd_id, self._clock() + self.ttl_seconds)
        with self._lock:
            self._forget_old()
            self._live[value] = ticket
        return value

    def redeem(self, value: str) -> Ticket:
        with self._lock:
            now = self._clock()
            ticket = self._live.pop(value, None)
            if ticket is None:
                spent = self._spent.get(value)
                if spent is None:
                    raise TicketRefused("ticket-unknown", "this ticket was not issued by this broker")
                if spent[1] == "ticket-expired":
                    raise TicketRefused("ticket-expired", "this ticket has expired")
                raise TicketRefused("ticket-used", "this ticket was already redeemed; a ticket is good for one fd")
            if now >= ticket.expires:
                self._spent[value] = (now, "ticket-expired")
                raise TicketRefused("ticket-expired", f"the ticket expired {now - ticket.expires:.1f} s ago")
            self._spent[value] = (now, "ticket-used")
            return ticket

    def _forget_old(self) -> None:
        now = self._clock()
        for value in [v for v, t in self._live.items() if t.expires <= now]:
            self._spent[value] = (now, "ticket-expired")
            del self._live[value]
        # A spent ticket is remembered for one more lifetime, then it is just unknown.
        for value in [v for v, (at, _) in self._spent.items() if at + self.ttl_seconds < now]:
            del self._spent[value]
        for key in [k for k, (_, _, expires) in self._answers.items() if expires <= now]:
            del self._answers[key]


def export_memfd(
    broker: Broker, tickets: Tickets, vm_id: str, memfd_id: str, socket_path: str, meta: RequestMeta
) -> Outcome:
    """Issue a ticket for a memfd's fd; not journalled: it changes no state, and dies with the process."""
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        answered = tickets.answered(meta)
        if answered is not None:
            return Outcome(201, answered, vm.generation, replayed=True)
        vm.require_not_lost()
        check_if_match(vm, meta.if_match)
        memfd = vm.memfd(memfd_id)
        try:
            broker.backend.memfd_fd(vm_id, memfd_id)
        except BackendError as err:
            raise backend_problem(err) from err
        answer = {
            "ticket": tickets.issue(vm_id, memfd_id),
            "vm_id": vm_id,
            "memfd_id": memfd_id,
            "size": memfd.size,
            "socket": socket_path,
            "expires_at": (broker.clock() + timedelta(seconds=tickets.ttl_seconds)).isoformat(),
        }
        tickets.remember(meta, answer)
        return Outcome(201, answer, vm.generation)


@contextmanager
def redeemed(broker: Broker, tickets: Tickets, value: str) -> Iterator[HandedOff]:
    """The fd a ticket names, held under the VM's lock so it cannot be closed while it is sent."""
    ticket = tickets.redeem(value)
    with broker.locked(ticket.vm_id):
        vm = broker.vm(ticket.vm_id)
        vm.require_not_lost()
        memfd = vm.memfd(ticket.memfd_id)
        try:
            fd = broker.backend.memfd_fd(ticket.vm_id, ticket.memfd_id)
        except BackendError as err:
            raise backend_problem(err) from err
        yield HandedOff(fd, memfd.size, sorted(f.value for f in memfd.flags))
