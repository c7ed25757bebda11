"""The serving gateway: the data plane in every inference pod (``docs/gateway.md``)."""
