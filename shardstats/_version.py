"""The one version string: the package, `cluster --version` and every worker's status read it here."""
__version__ = "0.2.0"
