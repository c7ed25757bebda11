"""Errors of the gateway that the command line reports (light to import: no server code)."""


class GatewayStartError(Exception):
    """The gateway cannot start; the message says why and what to do."""


class BundleLoadError(GatewayStartError):
    """The folder cannot be served; the message says which file and what to do."""
