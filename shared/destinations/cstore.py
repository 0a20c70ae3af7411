"""C-STORE SCU destination (PS3.4 Annex B, PS3.7 section 9.1.1).

The file is sent as stored: pynetdicom's chunked send streams the encoded dataset
without decoding it, proposing the instance's own transfer syntax only, so no
transcoding can happen on the way."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.status import code_to_category

from shared.config import CStoreDestination
from shared.errors import RetryLater

_config.STORE_SEND_CHUNKED_DATASET = True

# Warning statuses (PS3.4 B.2.3) still mean the instance was stored.
_STORED = {"Success", "Warning"}


def send(dest: CStoreDestination, path: Path) -> str:
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
    sop_class = meta.MediaStorageSOPClassUID
    syntax = meta.TransferSyntaxUID
    ae = AE(ae_title=dest.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_s
    ae.maximum_pdu_size = dest.max_pdu
    ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise RetryLater(f"association with {dest.ae_title}@{dest.host}:{dest.port} not established")
    try:
        if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
            raise RetryLater(
                f"{dest.ae_title} rejected SOP class {sop_class} in transfer syntax {syntax}"
            )
        status = assoc.send_c_store(path)
        if "Status" not in status:
            raise RetryLater(f"no C-STORE response from {dest.ae_title} (timeout or abort)")
        category = code_to_category(status.Status)
        if category not in _STORED:
            raise RetryLater(f"{dest.ae_title} answered C-STORE status 0x{status.Status:04X} ({category})")
    finally:
        assoc.release()
    return f"{dest.ae_title}@{dest.host}:{dest.port}"
