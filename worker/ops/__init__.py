"""The op contract, the registry, and the built-in ops with their helpers."""
