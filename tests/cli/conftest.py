"""The CLI tests share the client tests' broker (a real uvicorn server, SQLite, sim backend)."""

from ..client.conftest import Broker, broker

__all__ = ["Broker", "broker"]
