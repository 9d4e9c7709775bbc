"""The role a manager reports (``GET /health``, the 503 of a non-leader, the role gauge): a standby
names the leader it waits for, so until it has read the lease it is still starting."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from orchestrator.adapters.lease import LeaseKeeper
from orchestrator.core.lease import LeaseCore
from orchestrator.service import ManagerService, ManagerSettings


async def _lead(_epoch: int) -> None:
    return None


def test_a_standby_is_starting_until_it_has_read_who_holds_the_lease() -> None:
    assert ManagerService(ManagerSettings(db=":memory:", api_port=0)).role == "leader"  # no --ha
    service = ManagerService(ManagerSettings(db=":memory:", api_port=0, ha=True))
    pg_lease = cast(Any, SimpleNamespace(holder="manager-b"))  # role and status read only its name
    keeper = LeaseKeeper(pg_lease, LeaseCore(), _lead, lambda _reason: None)
    service.lease = keeper
    assert service.role == "starting"  # its first attempt has not come back
    keeper.core.sent(0.0)
    keeper.core.failed(0.1)  # the database did not answer: still not known
    assert service.role == "starting"
    keeper.leader_seen = ("manager-a", 3, 4.0)  # as its attempt found the lease held
    keeper.core.refused(0.2, 4.0)
    assert service.role == "standby" and keeper.status()["leader"]["epoch"] == 3
    keeper.core.sent(5.0)
    keeper.core.granted(4, 5.0)
    assert service.role == "starting"  # leads, still restoring
    service.serving = True
    assert service.role == "leader"
