"""What a poll works with: the studies and instances a peer lists, the protocol each
kind of peer implements for the poll loop (:mod:`shared.inputs.pollers.loop`), and the
outcome of one run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Protocol


@dataclass(frozen=True)
class StudyHit:
    study_uid: str
    study_date: str = ""  # YYYYMMDD, "" when the peer has none
    count: int | None = None  # NumberOfStudyRelatedInstances, None when not returned


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""


Done = Callable[[InstanceRef], None]
Failed = Callable[[InstanceRef, str], None]


class Backend(Protocol):
    def find_studies(self, since: str | None) -> Iterable[StudyHit]: ...

    def find_study(self, study_uid: str) -> StudyHit | None:
        """The study ``study_uid`` if the peer has it and it matches the source's query."""

    def list_instances(self, hit: StudyHit) -> list[InstanceRef]: ...

    def retrieve(self, hit: StudyHit, refs: list[InstanceRef], *, whole_study: bool, done: Done,
                 failed: Failed) -> None:
        """Retrieve and ingest ``refs``; call ``done`` once each is durably ingested,
        ``failed`` for each that is not. Raising fails whatever is not done."""

    def close(self) -> None: ...


@dataclass
class PollResult:
    source_id: str
    type: str
    studies_seen: int = 0  # studies the query returned
    found: int = 0  # studies with work to do
    queued: int = 0  # instances to retrieve
    retrieved: int = 0  # instances ingested
    already_had: int = 0  # instances listed again but already ingested: not retrieved
    failed: int = 0  # instances (or unlisted studies) not retrieved
    skipped: bool = False  # another run of this source held the lease
    errors: list[str] = field(default_factory=list)
    watermark: str | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failed

    def to_dict(self) -> dict:
        return asdict(self)
