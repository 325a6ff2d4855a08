"""Start-up: rebuild backend objects, replay pending operations, reconcile, report."""

from __future__ import annotations

from ..domain.model import Vm
from .broker import Broker, log
from .journal import replay_pending


def recover(broker: Broker) -> list[str]:
    """Bring the backend in line with the journal; return the disagreements found (never fixed)."""
    vms = broker.load_all()
    with broker.uow() as uow:
        broker.backend.adopt_frames(uow.frames.load_all())
    for vm in vms:
        if not broker.backend.restore(vm):
            log.warning("VM %s: backend objects are gone", vm.id)

    replay_pending(broker)
    # Pages the records did not place (a crash before their rows were written) got fresh frames.
    with broker.uow() as uow:
        for vm in vms:
            broker.record_frames(uow, vm.id)
        uow.commit()

    # Replay changes the backend, never the stored extents: the VMs just loaded are the record.
    report = reconcile(broker, vms)
    for line in report:
        log.warning("reconcile: %s", line)
    broker.reconcile_report = report
    broker.ready = True
    return report


def reconcile(broker: Broker, stored: list[Vm] | None = None) -> list[str]:
    """Compare the backend's inventory with the database (not the cache: it is the record)."""
    inventory = broker.backend.inventory()
    if stored is None:
        with broker.uow() as uow:
            stored = uow.vms.load_all()
    report: list[str] = []
    for vm in stored:
        held = inventory.get(vm.id)
        if held is None:
            report.append(f"VM {vm.id}: in the database, not in the backend")
            continue
        if held.memslots != set(vm.memslots):
            report.append(f"VM {vm.id}: memslots {sorted(vm.memslots)} stored, {sorted(held.memslots)} in the backend")
        for memfd in vm.memfds.values():
            runs = [(e.start, e.end) for e in memfd.population]
            if memfd.id not in held.memfds:
                report.append(f"VM {vm.id}: memfd {memfd.id} missing from the backend")
            elif held.memfds[memfd.id] != runs:
                report.append(f"VM {vm.id}: memfd {memfd.id} population differs from the backend")
    known = {vm.id for vm in stored}
    report += [f"VM {vm_id}: in the backend, not in the database" for vm_id in inventory if vm_id not in known]
    return report
