"""I/O drivers: the asyncio Protocols of the data plane and the dialer."""
