"""A typed client of the gmem-broker REST API, sync and async, for remote users.

    from service.client import BrokerClient, ProblemError
    with BrokerClient("http://127.0.0.1:8000") as broker:
        vm = broker.create_vm(name="vm-a", vm_type="sw_protected")

It imports nothing of the server. Mutations carry an Idempotency-Key made per call, so the retries
(lost answers, 502/503/504) never apply a change twice. ``token`` (or ``GMEM_BROKER_TOKEN``) is sent as
``Authorization: Bearer``. ``handoff.fetch_memfd`` redeems an export ticket for a memfd's fd (kvm).
"""

from . import calls, models
from .aio import AsyncBrokerClient
from .errors import ProblemError
from .models import Problem
from .sync import BrokerClient

__all__ = ["AsyncBrokerClient", "BrokerClient", "Problem", "ProblemError", "calls", "models"]
