"""``gmem-broker demo``: a confidential VM's boot, told through the API, with the extent map after each step."""

from __future__ import annotations

import secrets

import typer

from ..client import ProblemError
from .extent_map import compact_map
from .session import Session, Url, session, table

GIB = 1 << 30
MIB = 1 << 20
BASE_GPA = 4 * GIB
SWIOTLB_GPA, SWIOTLB_SIZE = BASE_GPA + 960 * MIB, 64 * MIB
TOUCHED = 16 * MIB
RELEASED_OFFSET, RELEASED_SIZE = 256 * MIB, 128 * MIB
# Confidential types first: their memory starts private, which is the story.
PREFERRED_TYPES = ("sev_snp", "tdx", "sw_protected", "default")


def demo(url: Url = None) -> None:
    """Create a VM, a 1 GiB memfd and a memslot, allocate, share a swiotlb window, punch released
    memory, migrate a page, printing the extent map after each step. Against --url (or
    GMEM_BROKER_URL), else against a broker started here on a temporary SQLite file (sim backend)."""
    if url:
        with session(url, False) as s:
            story(s, embedded=False)
        return
    from ..embedded import embedded_broker

    with embedded_broker() as embedded_url, session(embedded_url, False) as s:
        s.say(f"[dim]embedded broker at {embedded_url} (sim backend, temporary SQLite file)[/]")
        story(s, embedded=True)


class Teller:
    def __init__(self, s: Session, vm_id: str = "") -> None:
        self.s = s
        self.vm_id = vm_id
        self.n = 0

    def step(self, text: str) -> None:
        self.n += 1
        self.s.out.print(f"\n[bold]{self.n}. {text}[/]")

    def say(self, text: str) -> None:
        self.s.out.print(f"   {text}", highlight=False, markup=False)

    def show_map(self) -> None:
        for line in compact_map(self.s.client.all_vm_extents(self.vm_id)):
            self.s.out.print(line, highlight=False)


def story(s: Session, *, embedded: bool) -> None:
    c = s.client
    t = Teller(s)
    host = c.host()
    vm_type = next((v for v in PREFERRED_TYPES if v in host.vm_types), host.vm_types[0])
    t.step(f"create a {vm_type} VM on a {host.backend} host with {len(host.numa_nodes)} NUMA node(s)")
    vm = c.create_vm(name=f"demo-{secrets.token_hex(3)}", vm_type=vm_type)
    t.vm_id = vm.id
    t.say(f"VM {vm.id} ({vm.name}), {vm.state}, generation {vm.generation}")

    t.step("a 1 GiB guest_memfd, bound by memslot 0 at gpa 4 GiB")
    memfd = c.create_memfd(vm.id, GIB)
    c.create_memslot(vm.id, slot=0, gpa=BASE_GPA, size=GIB, memfd_id=memfd.id)
    t.say(f"memfd {memfd.id}; no page has backing yet")
    t.show_map()

    t.step("allocate the guest's RAM: private backing for all of it")
    allocated = c.allocate(vm.id, memfd.id, offset=0, length=GIB)
    t.say(f"{allocated.pages_allocated} pages allocated")
    t.show_map()

    t.step("boot: the VM runs, and its private pages are now protected")
    c.set_vm_state(vm.id, "running")

    t.step(f"the guest shares a {SWIOTLB_SIZE // MIB} MiB swiotlb window at {SWIOTLB_GPA:#x}")
    converted = c.convert(vm.id, [(SWIOTLB_GPA, SWIOTLB_SIZE, "shared")])
    t.say(f"{converted.pages_converted} pages now shared; their {converted.private_pages_freed} private pages punched")
    t.show_map()

    t.step(f"the VMM touches the first {TOUCHED // MIB} MiB of the window: shared backing appears")
    c.populate_shared(vm.id, gpa=SWIOTLB_GPA, size=TOUCHED)
    t.show_map()

    t.step(f"the guest reports {RELEASED_SIZE // MIB} MiB free: punch it")
    try:
        c.punch_hole(vm.id, memfd.id, offset=RELEASED_OFFSET, length=RELEASED_SIZE)
    except ProblemError as exc:
        t.say(f"without allow_private: refused, nothing changed: {exc.status} {exc.code}: {exc.problem.detail}")
    punched = c.punch_hole(vm.id, memfd.id, offset=RELEASED_OFFSET, length=RELEASED_SIZE, allow_private=True)
    t.say(f"with allow_private: {punched.pages_freed} pages freed")
    t.show_map()

    target = 1 if len(host.numa_nodes) > 1 else 0
    t.step(f"migrate the page at {BASE_GPA:#x} to NUMA node {target}")
    try:
        moved = c.migrate_page(vm.id, BASE_GPA, target_node=target)
    except ProblemError as exc:
        if exc.status != 404:
            raise
        t.say("migrate-page: not available on this server (404)")
    else:
        t.say(f"frame {moved.old_pfn} -> {moved.new_pfn} on node {moved.node}, by {moved.method}")
        t.show_map()

    t.step("the journal: one operation per mutation")
    journal = c.all_operations(vm.id)
    rows = [(o.seq, o.kind, o.status, o.generation) for o in journal]
    s.out.print(table(["seq", "kind", "status", "generation"], rows))
    if embedded:
        t.say("the embedded broker and its temporary database go away now")
    else:
        t.say(f"the VM stays: gmem-broker vm show {vm.id}; gmem-broker vm delete {vm.id} --force")


def register(cli: typer.Typer) -> None:
    cli.command("demo")(demo)
