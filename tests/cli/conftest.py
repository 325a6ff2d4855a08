"""The CLI tests share the client tests' broker (a real uvicorn server, SQLite, sim backend)."""

from ..client.conftest import Broker, broker, needs_migrate_page

__all__ = ["Broker", "broker", "needs_migrate_page"]
