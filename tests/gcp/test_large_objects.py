"""A large instance (256 MB, generated once for the module) into and out
of fake-gcs-server in memory bounded by a fixed buffer: the GCS destination
and the BlobStore upload in chunks (resumable upload) and download to a file. The peak
of Python's allocations (tracemalloc) stays under ``BOUND_MB``; the object's bytes are
checked by size and a SHA-256 computed by streaming."""

from __future__ import annotations

import pytest

from shared.adapters.gcs import UPLOAD_CHUNK_BYTES, GCSBlobStore
from shared.config import parse_config
from shared.destinations.gcs import GCSSender
from shared.dicom.io import sha256_file
from tests.support.gcp import unique
from tests.support.large import PeakMemory, delivery_for, make_large_instance

SIZE_MB = 256
BOUND_MB = 4 + 2 * UPLOAD_CHUNK_BYTES / 2**20  # a chunk read and its copy in the request (measured: 16.1 MB)
RSS_BOUND_MB = 48  # the peak resident set over the start: the chunk, its copies, thread stacks


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    path = tmp_path_factory.mktemp("large") / "large.dcm"
    uid, _ = make_large_instance(path, SIZE_MB)
    return path, uid, sha256_file(path)


def downloaded_sha256(blob, tmp_path) -> tuple[int, str]:
    copy = tmp_path / "downloaded.dcm"
    blob.download_to_filename(str(copy))
    try:
        return copy.stat().st_size, sha256_file(copy)
    finally:
        copy.unlink()


def test_gcs_destination_uploads_a_large_instance_in_bounded_memory(fake_gcs, large, tmp_path, monkeypatch):
    path, uid, sha256 = large
    bucket = unique("large")
    fake_gcs.create_buckets(bucket)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", fake_gcs.project)
    dest = parse_config({"destinations": [{"id": "gcs", "type": "gcs", "bucket": bucket,
                                           "name_template": "{SOPInstanceUID}.dcm"}], "rulesets": []}).destination("gcs")
    sender = GCSSender(dest)
    with PeakMemory() as peak:
        where = sender.send(path, delivery_for(path, "gcs"))
    assert peak.python_mb < BOUND_MB and peak.rss_mb < RSS_BOUND_MB, (peak.python_mb, peak.rss_mb)
    assert where == f"gs://{bucket}/{uid}.dcm"
    blob = fake_gcs.client().bucket(bucket).get_blob(f"{uid}.dcm")
    assert blob.size == path.stat().st_size
    assert downloaded_sha256(blob, tmp_path) == (path.stat().st_size, sha256)


def test_blob_store_puts_and_reads_a_large_object_in_bounded_memory(fake_gcs, large, tmp_path):
    path, _, sha256 = large
    bucket = unique("large")
    fake_gcs.create_buckets(bucket)
    store = GCSBlobStore(fake_gcs.client(), tmp_dir=str(tmp_path))
    with PeakMemory() as put_peak:
        ref = store.put_file(bucket, "ingest/large.dcm", path, {"axiom-source": "test"})
    assert put_peak.python_mb < BOUND_MB and put_peak.rss_mb < RSS_BOUND_MB, (put_peak.python_mb, put_peak.rss_mb)
    with PeakMemory() as read_peak:
        with store.local_path(ref) as local:
            size, digest = local.stat().st_size, sha256_file(local)
    assert read_peak.python_mb < BOUND_MB and read_peak.rss_mb < RSS_BOUND_MB, (read_peak.python_mb, read_peak.rss_mb)
    assert (size, digest) == (path.stat().st_size, sha256)
    assert store.metadata(ref) == {"axiom-source": "test"}
    assert list(tmp_path.iterdir()) == []  # the download is removed after use
