"""The ways into the pipeline: the C-STORE SCP (:mod:`shared.inputs.cstore`), STOW-RS
(:mod:`shared.inputs.stow`), the pollers (:mod:`shared.inputs.pollers`) and Healthcare
API notifications (:mod:`shared.inputs.healthcare_notify`). Each stores what it
receives through the one :class:`shared.inputs.ingest.Ingestor`."""
