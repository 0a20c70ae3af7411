"""content_digest: what makes two copies of an instance the same instance."""

from datetime import datetime, timezone
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared.dicom.io import content_digest
from shared.dicom.original_attributes import OriginalAttributesPolicy
from shared.morph import apply_actions


def _bytes(ds) -> bytes:
    out = BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _morphed(received_at: datetime, syntax=ExplicitVRLittleEndian) -> bytes:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    if syntax != ds.file_meta.TransferSyntaxUID:
        ds.file_meta.TransferSyntaxUID = syntax
    apply_actions(ds, [{"action": "set", "tag": "StationName", "value": "X"}],
                  original_attributes=OriginalAttributesPolicy(modifying_system="AXIOM", modified_at=received_at))
    return _bytes(ds)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_our_modification_time_counts_only_when_asked_to_ignore_it(syntax):
    one = _morphed(datetime(2026, 1, 1, tzinfo=timezone.utc), syntax)
    two = _morphed(datetime(2026, 6, 1, 12, 30, tzinfo=timezone.utc), syntax)
    assert one != two
    assert content_digest(one, ignore_last_modification_time=True) == content_digest(two, ignore_last_modification_time=True)
    assert content_digest(one) != content_digest(two)


def test_file_meta_and_trailing_padding_do_not_count_a_value_does():
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    assert (0xFFFC, 0xFFFC) in ds  # this test file carries Data Set Trailing Padding
    original = _bytes(ds)
    ds.file_meta.ImplementationClassUID = "1.2.3.4"
    ds.file_meta.SourceApplicationEntityTitle = "ANOTHERHOP"
    del ds[0xFFFCFFFC]
    resent = _bytes(ds)
    assert content_digest(original) == content_digest(resent)
    ds.PatientName = "Other^Name"
    assert content_digest(_bytes(ds)) != content_digest(original)


def test_a_file_without_file_meta_is_hashed_whole():
    import hashlib

    data = b"not a part 10 file" * 10
    assert content_digest(data) == hashlib.sha256(data).hexdigest()
