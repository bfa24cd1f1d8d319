"""asyncio bytes between workers: dialing with the handshake, outbound peer links, inbound connections."""
