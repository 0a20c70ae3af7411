"""The GCP container's entry point for the C-STORE gateway (``python -m scp_gateway``);
the listeners themselves are :mod:`shared.inputs.cstore`."""
