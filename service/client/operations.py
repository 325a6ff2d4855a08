"""The method table both clients share: one attribute per operation of the API.

``BrokerClient().create_vm(...)`` returns a ``Vm``; ``AsyncBrokerClient().create_vm(...)`` returns a
coroutine of one. The descriptor's ``__get__`` overloads tell the type checker which.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from . import calls
from .calls import Call
from .retry import Options

if TYPE_CHECKING:
    from .aio import AsyncBrokerClient
    from .sync import BrokerClient

P = ParamSpec("P")
T = TypeVar("T")


class _Op(Generic[P, T]):
    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, client: None, owner: type[Any]) -> _Op[P, T]: ...
    @overload
    def __get__(self, client: BrokerClient, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncBrokerClient, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, client: Any, owner: type[Any]) -> Any:
        if client is None:
            return self
        build = self.build

        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            return client.send(build(*args, **kwargs))

        return method


class Operations:
    options: Options

    @property
    def url(self) -> str:
        return self.options.url

    host = _Op(calls.host)
    metrics = _Op(calls.metrics)
    healthz = _Op(calls.healthz)
    readyz = _Op(calls.readyz)
    problem_type = _Op(calls.problem_type)
    create_vm = _Op(calls.create_vm)
    list_vms = _Op(calls.list_vms)
    get_vm = _Op(calls.get_vm)
    set_vm_state = _Op(calls.set_vm_state)
    delete_vm = _Op(calls.delete_vm)
    create_memfd = _Op(calls.create_memfd)
    list_memfds = _Op(calls.list_memfds)
    get_memfd = _Op(calls.get_memfd)
    delete_memfd = _Op(calls.delete_memfd)
    allocate = _Op(calls.allocate)
    punch_hole = _Op(calls.punch_hole)
    memfd_extents = _Op(calls.memfd_extents)
    read_page = _Op(calls.read_page)
    export_memfd = _Op(calls.export_memfd)
    create_memslot = _Op(calls.create_memslot)
    list_memslots = _Op(calls.list_memslots)
    delete_memslot = _Op(calls.delete_memslot)
    convert = _Op(calls.convert)
    populate_shared = _Op(calls.populate_shared)
    migrate_page = _Op(calls.migrate_page)
    migrate_pages = _Op(calls.migrate_pages)
    evacuate = _Op(calls.evacuate)
    frames = _Op(calls.frames)
    read_gfn = _Op(calls.read_gfn)
    write_gfn = _Op(calls.write_gfn)
    vm_extents = _Op(calls.vm_extents)
    operations = _Op(calls.operations)
