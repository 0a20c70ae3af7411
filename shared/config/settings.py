"""Global settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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
        description="At most this many files are unlinked per second: on some filesystems a mass delete slows"
                    " the creation of new files, and so C-STORE, for minutes (bench/results/retention.md).")
    sweep_every_s: float = Field(
        default=600.0, gt=0,
        description="Seconds between two sweeps for objects past their age.")


class AIStandardizer(Doc):
    """Vertex AI Gemini for the `ai_standardize` actions (shared/vertex_standardizer.py):
    each distinct value is asked once and the answer kept in the document store."""

    model: str = Field(default="gemini-2.5-flash", examples=["gemini-2.5-flash"],
                       description="The Gemini model asked, by its Vertex AI name.")
    project: str | None = Field(default=None, examples=["my-project"],
                                description="Google Cloud project billed for the calls; none: $GOOGLE_CLOUD_PROJECT, "
                                            "else the project of the default credentials.")
    location: str = Field(default="us-central1", examples=["europe-west4"],
                          description="Vertex AI region the calls go to (and the values sent to the model).")
    endpoint: str | None = Field(default=None, examples=["https://europe-west4-aiplatform.googleapis.com"],
                                 description="Base URL of the Vertex AI API (a Private Service Connect endpoint); "
                                             "none: Google's endpoint for `location`.")
    daily_budget: int = Field(default=1000, ge=0,
                              description="Model calls allowed per UTC day, over all processes; past it, values not "
                                          "cached yet take the `fallback`.")
    rate_per_minute: float = Field(default=60, gt=0,
                                   description="Model calls per minute from one process; a call waits for a free slot "
                                               "at most `timeout_s`, then takes the `fallback`.")
    timeout_s: float = Field(default=20, gt=0,
                             description="Seconds a model call may take before its `fallback` is taken.")
    fallback: Literal["keep", "default", "fail", "hold"] = Field(
        default="keep",
        description="When the model cannot answer (budget spent, unavailable, slow, or an answer outside `allowed`):"
                    " `keep` the value, write `default`, `fail` the instance into an exception record, or `hold` it"
                    " and try again later.")
    default: str | None = Field(default=None, examples=["UNKNOWN"],
                                description="The value written for `fallback: default`.")
    instructions: str | None = Field(default=None, examples=["Answer in the site's abbreviations."],
                                     description="Guidance sent with every value, before the action's own.")

    @model_validator(mode="after")
    def _default_given(self):
        if self.fallback == "default" and self.default is None:
            raise ValueError("fallback 'default' needs a default value")
        return self


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
    lookup_max_attempts: int = Field(
        default=100, ge=1,
        description="Attempts of the crosswalk stage on a plan while a crosswalk database (or the model, with "
                    "`fallback: hold`) does not answer, a minute apart once backed off (100: about an hour and a "
                    "half), before it becomes a `failed` exception record; the instances wait meanwhile. The "
                    "embedded runtime's; on GCP the crosswalk subscription's `max_delivery_attempts` (Terraform).")
    # the gateway stops accepting early so that what it accepted can still be processed
    min_free_bytes: int = Field(
        default=1 << 30, ge=0,
        description="Below this many free bytes in the data dir, the gateway refuses associations and C-STOREs "
                    "(status 0xA700, out of resources); 0: never.")
    retention: Retention = Field(
        default_factory=Retention,
        description="When received, processed and quarantined objects are deleted; nothing undelivered or held is.",
        examples=[{"received_days": 30, "processed_days": 14, "quarantine_days": 90, "max_deletes_per_s": 5}])
    ai_standardizer: AIStandardizer | None = Field(
        default=None, examples=[{"model": "gemini-2.5-flash", "location": "europe-west4", "daily_budget": 500}],
        description="Vertex AI Gemini for `ai_standardize` actions; none: a deterministic normalization without a "
                    "model (whitespace, case, the closest allowed value).")
