"""The spanner: one QIDO-RS query (PS3.18 10.6) answered from many sources at once,
DICOMweb sources by QIDO-RS and DIMSE sources by C-FIND (PS3.4 Annex C). ``query``
parses and validates the caller's query and translates it to each source's protocol
and back; ``merge`` turns the sources' answers into one, a row per study, series or
instance, recording on each row every source that holds it. Both are pure (no I/O);
the network clients and the fan-out sit on top of them.
"""
