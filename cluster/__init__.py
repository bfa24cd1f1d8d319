"""The ``cluster`` command line, the local launcher, and a Python API (``cluster.api.Cluster``)."""
