"""STOW-RS input: the Store Instances transaction of PS3.18 section 10.5. HTTP in
:mod:`~shared.inputs.stow.http`, API keys in :mod:`~shared.inputs.stow.auth`, the
request body to temporary files in :mod:`~shared.inputs.stow.spool`, the transaction
(checks, ingest, response) in :mod:`~shared.inputs.stow.store`."""
