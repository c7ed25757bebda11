"""Errors of the gateway that the command line reports (light to import: no server code)."""


class BundleLoadError(Exception):
    """The folder cannot be served; the message says which file and what to do."""
