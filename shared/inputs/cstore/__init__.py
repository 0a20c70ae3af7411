"""The C-STORE SCP input (PS3.4 Annex B, PS3.7 9.1.1): pynetdicom listeners that write
each received instance durably through the Ingestor before answering Success. The GCP
container's entry point is ``python -m scp_gateway``."""
