"""The DICOM SCP gateway: C-ECHO and C-STORE listeners that write each received
instance durably to the ingest store before answering Success."""
