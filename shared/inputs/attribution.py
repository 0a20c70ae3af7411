"""Which configured source an arriving instance belongs to, when it arrives through
another input than that source's own: a C-MOVE poller's instances come in through the
C-STORE listener, a Healthcare store's notifications through Pub/Sub. Labelling them
with that source's id keeps one source id per peer, whichever way in was taken."""

from __future__ import annotations

import re

STORE_NAME = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/datasets/(?P<dataset>[^/]+)"
                        r"/dicomStores/(?P<dicom_store>[^/]+)$")


def source_for_move(sources, *, peer_ae: str, move_originator_ae: str | None) -> str | None:
    """For the C-STORE listener: the id of the DIMSE poller whose C-MOVE made
    ``peer_ae`` send this instance (C-STORE sub-operations carry Move Originator AE
    Title (0000,1030), PS3.7 9.1.1.1), or None for an ordinary C-STORE."""
    if not move_originator_ae:
        return None
    for s in sources:
        if (getattr(s, "type", None) == "dimse_poller" and s.enabled and s.retrieve == "move"
                and s.calling_ae.strip() == move_originator_ae.strip() and s.ae_title.strip() == peer_ae.strip()):
            return s.id
    return None


def source_for_store(sources, store: str) -> str | None:
    """For Healthcare API notifications: the id of the configured HealthcareSource for
    ``store`` (a store resource name), if any, so they carry the poller's source id."""
    m = STORE_NAME.match(store)
    if not m:
        return None
    for s in sources:
        if (getattr(s, "type", None) == "healthcare" and s.project == m["project"] and s.location == m["location"]
                and s.dataset == m["dataset"] and s.dicom_store == m["dicom_store"]):
            return s.id
    return None
