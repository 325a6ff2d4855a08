"""Start-up: rebuild backend objects, replay pending operations, reconcile, report."""

from __future__ import annotations

from ..domain.model import Vm, VmState
from ..domain.operation import OperationStatus
from .broker import Broker, log
from .journal import replay_pending
from .vms import mark_lost


def recover(broker: Broker) -> list[str]:
    """Bring the backend in line with the journal; return the disagreements found (never fixed).

    A VM whose kernel objects are gone is marked ``lost`` rather than recreated: its guest's
    memory went with them, so recreating empty objects would only hide that.
    """
    vms = broker.load_all()
    with broker.uow() as uow:
        broker.backend.adopt_frames(uow.frames.load_all())
    lost = {vm.id for vm in vms if vm.state is VmState.LOST or not broker.backend.restore(vm)}
    _abandon_pending(broker, lost)
    for vm in vms:
        if vm.id in lost and vm.state is not VmState.LOST:
            log.warning("VM %s: backend objects are gone; marked lost", vm.id)
            mark_lost(broker, vm.id)

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


def _abandon_pending(broker: Broker, lost: set[str]) -> None:
    """Pending operations of lost VMs cannot be replayed: their kernel objects are gone."""
    with broker.uow() as uow:
        for op in uow.journal.pending():
            if op.vm_id in lost:
                error = {"code": "vm-lost", "detail": "the VM's kernel objects were gone at start-up", "errno": None}
                uow.journal.finish(op.id, OperationStatus.FAILED, result=None, error=error, response_status=None)
        uow.commit()


def reconcile(broker: Broker, stored: list[Vm] | None = None) -> list[str]:
    """Compare the backend's inventory with the database (not the cache: it is the record)."""
    inventory = broker.backend.inventory()
    if stored is None:
        with broker.uow() as uow:
            stored = uow.vms.load_all()
    report: list[str] = []
    for vm in stored:
        if vm.state is VmState.LOST:
            continue
        held = inventory.get(vm.id)
        if held is None:
            report.append(f"VM {vm.id}: in the database, not in the backend")
            continue
        shared = [(e.start, e.end) for e in vm.shared]
        if held.shared != shared:
            report.append(f"VM {vm.id}: shared backing {shared} stored, {held.shared} in the backend")
        if held.memslots != set(vm.memslots):
            report.append(f"VM {vm.id}: memslots {sorted(vm.memslots)} stored, {sorted(held.memslots)} in the backend")
        for memfd in vm.memfds.values():
            runs = [(e.start, e.end) for e in memfd.population]
            if memfd.id not in held.memfds:
                report.append(f"VM {vm.id}: memfd {memfd.id} missing from the backend")
            elif held.memfds[memfd.id] is not None and held.memfds[memfd.id] != runs:
                report.append(f"VM {vm.id}: memfd {memfd.id} population differs from the backend")
    known = {vm.id for vm in stored}
    report += [f"VM {vm_id}: in the backend, not in the database" for vm_id in inventory if vm_id not in known]
    return report
