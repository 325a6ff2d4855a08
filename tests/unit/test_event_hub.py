"""Which commits wake which event streams."""

from __future__ import annotations

import asyncio

from service.operations.events import EventHub


async def _woken(hub: EventHub, vm_id: str | None, at_pending: bool, tags: frozenset[str]) -> bool:
    with hub.subscription(vm_id) as sub:
        sub.at_pending = at_pending
        # notify runs on the mutating thread; the stream's loop is woken through call_soon_threadsafe.
        await asyncio.to_thread(hub.notify, tags)
        try:
            await asyncio.wait_for(sub.event.wait(), 0.2)
        except TimeoutError:
            return False
        return True


def woken(vm_id: str | None, *, at_pending: bool = False, tags: frozenset[str] = frozenset()) -> bool:
    hub = EventHub()
    result = asyncio.run(_woken(hub, vm_id, at_pending, tags))
    assert hub.subscribers == 0
    return result


def test_a_vm_stream_wakes_for_its_vm_only() -> None:
    assert woken("vm_a", tags=frozenset({"vm_a", "vm_b"}))
    assert not woken("vm_a", tags=frozenset({"vm_b"}))
    # A commit adding no journal row (an operation finished) matters to a stream stopped at one.
    assert not woken("vm_a")
    assert woken("vm_a", at_pending=True)


def test_a_host_stream_wakes_for_every_commit() -> None:
    assert woken(None, tags=frozenset({"vm_b"}))
    assert woken(None)
