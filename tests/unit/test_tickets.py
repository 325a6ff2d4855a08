"""Export tickets: single use, expiring, and a refusal that says why."""

from __future__ import annotations

import pytest

from service.operations.handoff import TicketRefused, Tickets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(tickets: Tickets, value: str) -> str:
    with pytest.raises(TicketRefused) as refused:
        tickets.redeem(value)
    return refused.value.code


def test_a_ticket_is_good_once() -> None:
    tickets = Tickets(60, Clock())
    value = tickets.issue("vm", "mfd")
    assert tickets.redeem(value).memfd_id == "mfd"
    assert refusal(tickets, value) == "ticket-used"
    assert refusal(tickets, "forged") == "ticket-unknown"


def test_a_ticket_expires_after_its_lifetime() -> None:
    clock = Clock()
    tickets = Tickets(60, clock)
    fresh, stale = tickets.issue("vm", "a"), tickets.issue("vm", "b")
    clock.now += 59.9
    assert tickets.redeem(fresh).memfd_id == "a"
    clock.now += 0.2
    assert refusal(tickets, stale) == "ticket-expired"
    assert refusal(tickets, stale) == "ticket-expired"


def test_tickets_are_not_guessable_and_spent_ones_are_forgotten_eventually() -> None:
    clock = Clock()
    tickets = Tickets(60, clock)
    values = {tickets.issue("vm", "m") for _ in range(100)}
    assert len(values) == 100
    assert min(len(v) for v in values) >= 40
    clock.now += 61
    tickets.issue("vm", "m")  # issuing sweeps: expired tickets are remembered as such for a lifetime
    assert refusal(tickets, next(iter(values))) == "ticket-expired"
    clock.now += 61
    tickets.issue("vm", "m")
    assert refusal(tickets, next(iter(values))) == "ticket-unknown"
