"""Global settings."""

from __future__ import annotations

from pydantic import Field

from shared.config.base import Doc, TagAddress

DEFAULT_REQUIRED = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"]


class Retention(Doc):
    """How long the embedded runtime keeps objects (shared/runtime/retention.py); in GCP
    the buckets' lifecycle rules take the same ages (docs/architecture.md, Retention)."""

    received_days: float | None = Field(
        default=30, ge=0,
        description="Days a received (ingest) object is kept once every delivery of its instance is settled"
                    " (delivered, or its exception record archived); 0 or null keeps them forever.")
    processed_days: float | None = Field(
        default=30, ge=0,
        description="Days a processed (morphed) object is kept once its deliveries are settled; 0 or null keeps them forever.")
    quarantine_days: float | None = Field(
        default=90, ge=0,
        description="Days a quarantined object (bad input, not retryable) is kept; 0 or null keeps them forever.")
    max_deletes_per_s: float = Field(
        default=5.0, gt=0,
        description="At most this many files are unlinked per second: on ext4 without a journal, every"
                    " recently deleted inode slows the creation of new files (bench/results/retention.md).")
    sweep_every_s: float = Field(
        default=600.0, gt=0,
        description="Seconds between two sweeps for objects past their age.")


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
    retention: Retention = Field(
        default_factory=Retention,
        description="When received, processed and quarantined objects are deleted; nothing undelivered or held is.",
        examples=[{"received_days": 30, "processed_days": 14, "quarantine_days": 90, "max_deletes_per_s": 5}])
