"""The worker daemon and what a job runs on, by concern.

``net/``   asyncio bytes: dialing with the handshake, peer links, inbound connections
``comm/``  what ops are written against: the communicator, its TCP and in-memory transports,
           collectives and the credit shuffle
``ops/``   the op contract, the registry and the built-in ops
``io/``    shard readers and the listing of what an input names
``server.py``, ``jobs.py``, ``memory.py``: the daemon itself
"""
