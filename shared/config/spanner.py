"""Spanners: one QIDO-RS query (PS3.18 10.6) answered from many PACS at once. A
spanner names configured `sources` (DICOMweb: QIDO-RS; DIMSE: C-FIND, PS3.4 Annex C;
Healthcare API stores: QIDO-RS), each with a priority for conflicting attribute values
and an optional timeout, and says how the fan-out behaves."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shared.config.base import Doc


class SpannerSource(Doc):
    """One source a spanner asks: a configured source (`sources`), polled or not."""

    source: str = Field(examples=["pacs-north"], description="Id of a configured source (`sources`).")
    priority: int = Field(
        default=100, ge=0, le=10000,
        description="Lower wins: where two sources answer different values for the same attribute of the same "
                    "study, series or instance, the value of the source with the lowest priority (then the "
                    "first listed) is kept.")
    timeout_s: float | None = Field(default=None, gt=0, le=600,
                                    description="Seconds this source may take; none: the spanner's `timeout_s`.")


class Spanner(Doc):
    """A spanned view over several sources, queried through
    `/api/v1/spanner/qido/{studies,series,instances}?spanner_config_id=ID`."""

    id: str = Field(examples=["enterprise"], description="Unique id of the spanner; queries name it.")
    name: str = Field(default="", examples=["All sites"], description="What the spanner is, for people.")
    sources: list[SpannerSource] = Field(min_length=1, max_length=64,
                                         description="The sources asked, each at most once.")
    max_concurrency: int = Field(default=8, ge=1, le=64,
                                 description="Sources asked at the same time; the others wait for a free slot.")
    timeout_s: float = Field(default=10.0, gt=0, le=600,
                             description="Seconds a source may take to answer a query, all its pages included.")
    retry_attempts: int = Field(default=1, ge=0, le=5,
                                description="Further tries of a source that failed before its timeout (not of one "
                                            "that timed out).")
    failure_strategy: Literal["partial_results", "fail_fast"] = Field(
        default="partial_results",
        description="When a source fails or times out: `partial_results` answers what the others found, naming "
                    "the missing sources in a `Warning` header and the per-source status; `fail_fast` answers "
                    "an error instead.")
    deduplicate: bool = Field(
        default=True,
        description="Merge the rows of the same study, series or instance (by its UID) found on several sources "
                    "into one, listing every source that holds it; false: one row per source.")
    cache_ttl_s: float = Field(default=30.0, ge=0, le=86400,
                               description="Seconds an identical query's merged answer is reused; 0: no cache.")

    @model_validator(mode="after")
    def _sources_once(self):
        ids = [s.source for s in self.sources]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"a source is listed more than once: {', '.join(twice)}")
        return self
