"""The ``gmem-broker`` commands for people, speaking to a broker through ``service.client``."""

from __future__ import annotations

import typer

from . import demo, memory, views, vms


def register(cli: typer.Typer) -> None:
    cli.add_typer(vms.app, name="vm")
    memory.register(cli)
    views.register(cli)
    demo.register(cli)
