"""Global settings."""

from __future__ import annotations

from pydantic import Field

from shared.config.base import Doc, TagAddress

DEFAULT_REQUIRED = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"]


class Settings(Doc):
    required_attributes: list[TagAddress] = Field(default_factory=lambda: list(DEFAULT_REQUIRED))
    log_original_attributes: bool = False
    modifying_system: str = Field(default="AXIOM FLOW", max_length=64)
    ingest_bucket: str = "ingest"
    processed_bucket: str = "processed"
    quarantine_bucket: str = "quarantine"
    stage_max_attempts: int = Field(default=5, ge=1)
    # below this much free space where the gateway receives (the data dir), it refuses
    # associations and C-STOREs (0xA700) so what it accepted can still be processed; 0: never
    min_free_bytes: int = Field(default=1 << 30, ge=0)
