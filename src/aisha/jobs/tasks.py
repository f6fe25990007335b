"""Every feature's job task functions and recovery sweeps, registered on the container's services."""

from __future__ import annotations

from aisha.jobs import billing
from aisha.jobs.billing import BillingServices


def register_tasks(services: BillingServices) -> None:
    billing.register(services)
