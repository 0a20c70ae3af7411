"""Global settings."""

from __future__ import annotations

from pydantic import Field

from shared.config.base import Doc, TagAddress

DEFAULT_REQUIRED = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"]


class Settings(Doc):
    """What every instance must carry, how changes are recorded, where the pipeline keeps
    instances, and when it gives up or stops accepting."""

    required_attributes: list[TagAddress] = Field(
        default_factory=lambda: list(DEFAULT_REQUIRED), examples=[["SOPInstanceUID", "StudyInstanceUID", "Modality"]],
        description="Attributes every instance must have, non-empty; an instance without one is quarantined "
                    "with an exception record instead of routed.")
    log_original_attributes: bool = Field(
        default=False,
        description="Record the values an action changes in the Original Attributes Sequence (0400,0561) of the "
                    "instance sent (PS3.3 C.12.1); a ruleset may say otherwise.")
    modifying_system: str = Field(
        default="AXIOM FLOW", max_length=64,
        description="The Modifying System (0400,0563) written in Original Attributes items (VR LO, at most 64 "
                    "characters).")
    ingest_bucket: str = Field(default="ingest", description="Bucket (or folder of the data dir) received instances "
                                                             "are stored in before routing.")
    processed_bucket: str = Field(default="processed",
                                  description="Bucket (or folder of the data dir) for instances as changed by actions.")
    quarantine_bucket: str = Field(default="quarantine",
                                   description="Bucket (or folder of the data dir) for instances that cannot be routed.")
    stage_max_attempts: int = Field(
        default=5, ge=1,
        description="Attempts of a pipeline stage on one message before it becomes a `failed` exception record.")
    # the gateway stops accepting early so that what it accepted can still be processed
    min_free_bytes: int = Field(
        default=1 << 30, ge=0,
        description="Below this many free bytes in the data dir, the gateway refuses associations and C-STOREs "
                    "(status 0xA700, out of resources); 0: never.")
