"""Pollers: find studies on a peer (DICOMweb, DIMSE, Healthcare API) and bring their
instances into the pipeline. The loop is :mod:`shared.inputs.pollers.loop`, what it
works with :mod:`shared.inputs.pollers.types`, each kind of peer its own module."""

from shared.inputs.pollers.loop import poll_by_id, poll_source, source_status
from shared.inputs.pollers.types import Backend, Done, Failed, InstanceRef, PollResult, StudyHit

__all__ = ["Backend", "Done", "Failed", "InstanceRef", "PollResult", "StudyHit", "poll_by_id", "poll_source",
           "source_status"]
