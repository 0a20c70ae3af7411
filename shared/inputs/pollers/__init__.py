"""Pollers: find studies on a peer (DICOMweb, DIMSE, Healthcare API) and bring their
instances into the pipeline. The poll loop is :mod:`shared.inputs.pollers.loop`."""

from shared.inputs.pollers.loop import (
    Backend,
    Done,
    Failed,
    InstanceRef,
    PollResult,
    StudyHit,
    handle_healthcare_notification,
    ingest_healthcare_notification,
    poll_by_id,
    poll_source,
    source_status,
)

__all__ = ["Backend", "Done", "Failed", "InstanceRef", "PollResult", "StudyHit", "handle_healthcare_notification",
           "ingest_healthcare_notification", "poll_by_id", "poll_source", "source_status"]
