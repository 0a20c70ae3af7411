"""Orthanc's change log as a poller's second way to find studies.

A date-bounded query (QIDO-RS or C-FIND with ``StudyDate=since-``) cannot see a study
dated before ``since`` that arrives, or gains instances, later. Orthanc numbers every
change of its database (``GET /changes?since=SEQ&limit=N`` answers
``{"Changes": [{"ChangeType", "ResourceType", "ID", "Seq", ...}], "Done", "Last"}``),
so a poller that remembers the last sequence number it read can list every instance
stored since its previous run, whatever its StudyDate. Only ``NewInstance`` changes
are read: a new study or series always starts with one, and an instance added to an
existing series produces nothing else (Orthanc's ``StableStudy`` comes only after
``StableAge`` and is lost if Orthanc restarts in between).

Each changed instance costs one small REST call (its parent series), each changed
series one more (its study): the Orthanc ids are resolved to Study Instance UIDs here,
and the poller then asks the peer (QIDO-RS / C-FIND, with the source's own query keys)
about each such study, so the source's filters still apply. This is an Orthanc
extension: the DICOMweb standard and DIMSE have no change feed.
"""

from __future__ import annotations

import logging

import httpx

log = logging.getLogger(__name__)

PAGE = 1000  # changes per request
MAX_CHANGES_PER_RUN = 200_000  # a bound for one run; the rest is read by the next one


class OrthancChanges:
    def __init__(self, url: str, *, auth: httpx.Auth | None = None, headers: dict[str, str] | None = None,
                 timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self.http = httpx.Client(auth=auth, headers=headers or {}, timeout=httpx.Timeout(timeout_s))

    @classmethod
    def for_source(cls, source, secrets) -> "OrthancChanges | None":
        config = getattr(source, "orthanc_changes", None)
        if config is None:
            return None
        from shared.httpauth import httpx_auth

        auth, headers = httpx_auth(config.auth, secrets)
        return cls(config.url, auth=auth, headers=headers, timeout_s=source.timeout_s)

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, params: dict | None = None) -> dict:
        # params=None, not {}: httpx drops a query already in ``path`` when given params
        r = self.http.get(f"{self.url}{path}", params=params)
        r.raise_for_status()
        return r.json()

    def last(self) -> int:
        """The sequence number of the newest change (where the next read starts)."""
        return int(self._get("/changes?last")["Last"])

    def studies_since(self, seq: int) -> tuple[set[str], int]:
        """Study Instance UIDs of every instance stored after change ``seq`` (those
        deleted since are left out), and the sequence number to start from next time.
        A log that went backwards (Orthanc's database was replaced) restarts from its
        current end: the date-bounded query with its lookback is then the only net."""
        last = self.last()
        if last < seq:
            log.warning("Orthanc %s: change log is at %d, behind the %d read before (database replaced?);"
                        " restarting from its end", self.url, last, seq)
            return set(), last
        instances: list[str] = []
        read = 0
        while read < MAX_CHANGES_PER_RUN:
            page = self._get("/changes", {"since": seq, "limit": PAGE})
            for change in page.get("Changes", []):
                if change.get("ChangeType") == "NewInstance" and change.get("ID"):
                    instances.append(change["ID"])
            read += len(page.get("Changes", []))
            seq = max(seq, int(page.get("Last", seq)))
            if page.get("Done") or not page.get("Changes"):
                break
        series_study: dict[str, str | None] = {}
        studies: set[str] = set()
        for instance_id in dict.fromkeys(instances):
            series_id = self._parent(f"/instances/{instance_id}", "ParentSeries")
            if series_id is None:
                continue
            if series_id not in series_study:
                study = self._resource(f"/series/{series_id}/study")
                series_study[series_id] = (study or {}).get("MainDicomTags", {}).get("StudyInstanceUID")
            if series_study[series_id]:
                studies.add(series_study[series_id])
        return studies, seq

    def _resource(self, path: str) -> dict | None:
        r = self.http.get(f"{self.url}{path}")
        if r.status_code == 404:  # deleted since the change
            return None
        r.raise_for_status()
        return r.json()

    def _parent(self, path: str, key: str) -> str | None:
        return (self._resource(path) or {}).get(key)
