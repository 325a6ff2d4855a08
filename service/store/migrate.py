"""Alembic, driven from code: upgrade, and the schema check ``serve`` makes before starting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: str | None
    head: str
    known: bool

    @property
    def ok(self) -> bool:
        return self.current == self.head

    def problem(self) -> str | None:
        if self.ok:
            return None
        if self.current is None:
            return "the database has no gmem-broker schema; run `gmem-broker db upgrade` first"
        if not self.known:
            return (
                f"the database schema ({self.current}) is newer than this code (head {self.head}); "
                "upgrade gmem-broker or point it at another database"
            )
        return f"the database schema ({self.current}) is behind this code ({self.head}); run `gmem-broker db upgrade`"


def schema_status(engine: Engine, url: str) -> SchemaStatus:
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    assert head is not None
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    known = current is None or any(rev.revision == current for rev in script.walk_revisions())
    return SchemaStatus(current, head, known)
