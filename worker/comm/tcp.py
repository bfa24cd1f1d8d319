"""The TCP transport of the communicator: rank r is worker ``ranks[r]``; frames go out on that peer's link."""
from __future__ import annotations

from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.net.links import PeerLink


class TcpComm(Communicator):
    """A job's communicator on a worker: rank r is worker ``ranks[r]``; frames go out on that peer's link."""

    def __init__(self, job: str, ranks: list[int], my_id: int, links: dict[int, PeerLink], timeout: float) -> None:
        super().__init__(job, ranks.index(my_id), len(ranks), timeout)
        self.ranks = ranks
        self.links = links
        self.addrs: list[str] | None = None     # each rank's listening address (set by the daemon)

    async def _transmit(self, dest: int, frame: bytes) -> None:
        await self.links[self.ranks[dest]].send(frame, self.job)
