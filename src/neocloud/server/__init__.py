"""The control plane: REST API, reconcilers, backends, metering (``neocloud server``)."""
