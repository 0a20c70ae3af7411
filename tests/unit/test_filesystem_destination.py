"""The filesystem destination with hostile tag values: names stay inside the root,
failures that retrying cannot fix are refused, and nothing in a reason comes from a tag."""

import errno
import os
from pathlib import Path

import pytest

from shared.adapters.files import durable_place
from shared.config import parse_config
from shared.destinations.filesystem import FilesystemSender, refused_or_retried
from shared.dicom.io import content_digest
from shared.errors import DeliveryRefused, RetryLater
from shared.messages import BlobRef, Delivery, IngestMetadata
from tests.support.badvalues import ct, encoded

TEMPLATE = "{PatientID}/{StudyID}/{AccessionNumber}/{SOPInstanceUID}.dcm"
CANARY = "CANARY7Q3"


def sender(root: Path, template: str = TEMPLATE, on_conflict: str = "exception") -> FilesystemSender:
    dest = parse_config({"destinations": [{"id": "fs", "type": "filesystem", "path": str(root),
                                           "name_template": template, "on_conflict": on_conflict}]}).destination("fs")
    return FilesystemSender(dest, root)


def instance(folder: Path, **values) -> tuple[Path, Delivery]:
    values = {"PatientID": f"{CANARY}-P", "StudyID": "S1", "AccessionNumber": "A1", **values}
    ds = ct(**values)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    path.write_bytes(encoded(ds))
    blob = BlobRef(bucket="ingest", name=path.name)
    return path, Delivery(sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                          transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), destination_id="fs", blob=blob,
                          sha256=content_digest(path.read_bytes()), source=blob, ingest=IngestMetadata())


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def layout(tmp_path):
    inputs, root = tmp_path / "in", tmp_path / "a" / "b" / "c" / "out"
    inputs.mkdir()
    root.mkdir(parents=True)
    return inputs, root


def test_three_dot_dot_fields_are_refused_and_nothing_leaves_the_root(layout, tmp_path):
    inputs, root = layout
    path, delivery = instance(inputs, PatientID="..", StudyID="..", AccessionNumber="..")
    with pytest.raises(DeliveryRefused, match=r"PatientID is '\.' or '\.\.'"):
        sender(root).send(path, delivery)
    assert files_under(tmp_path) == {path}


def test_separators_and_nul_in_values_are_made_safe_inside_the_root(layout):
    inputs, root = layout
    path, delivery = instance(inputs, PatientID="../../etc/passwd", StudyID="/abs", AccessionNumber="a\0b")
    where = sender(root).send(path, delivery)
    assert Path(where) == root / ".._.._etc_passwd" / "_abs" / "a_b" / f"{delivery.sop_instance_uid}.dcm"
    assert Path(where).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("on_conflict", ["exception", "overwrite"])
def test_a_folder_where_the_file_goes_is_refused_and_leaves_no_temporary_file(layout, on_conflict):
    inputs, root = layout
    path, delivery = instance(inputs)
    target = root / f"{CANARY}-P" / "S1" / "A1" / f"{delivery.sop_instance_uid}.dcm"
    target.mkdir(parents=True)
    with pytest.raises(DeliveryRefused) as caught:
        sender(root, on_conflict=on_conflict).send(path, delivery)
    assert str(caught.value) == ("destination fs cannot store this instance under its name: a folder already has "
                                 "this instance's name (EISDIR: Is a directory)")
    assert files_under(root) == set()


def test_a_file_where_a_folder_goes_is_refused(layout):
    inputs, root = layout
    path, delivery = instance(inputs)
    (root / f"{CANARY}-P").write_bytes(b"not a folder")
    with pytest.raises(DeliveryRefused, match=r"a part of the name that must be a folder is a file \(ENOTDIR") as caught:
        sender(root).send(path, delivery)
    assert CANARY not in str(caught.value)
    assert files_under(root) == {root / f"{CANARY}-P"}


def test_a_path_too_long_for_the_system_is_refused(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    root = tmp_path
    while len(str(root)) + 201 < 4000:  # PATH_MAX is 4096: the root plus a long name goes over
        root = root / ("d" * 200)
    root.mkdir(parents=True)
    path, delivery = instance(inputs, PatientID=f"{CANARY}-" + "p" * 240)
    with pytest.raises(DeliveryRefused, match=r"the name is too long for the file system \(ENAMETOOLONG") as caught:
        sender(root).send(path, delivery)
    assert CANARY not in str(caught.value)


def test_an_over_long_value_is_refused_before_the_file_system_sees_it(layout):
    inputs, root = layout
    path, delivery = instance(inputs, PatientID=CANARY * 600)
    with pytest.raises(DeliveryRefused) as caught:
        sender(root).send(path, delivery)
    assert str(caught.value) == ("the name template cannot name this instance safely: PatientID is 5400 bytes long, "
                                 "over the file name limit of 255")
    assert files_under(root) == set()


def test_os_errors_lose_their_file_names():
    full = refused_or_retried("fs", OSError(errno.ENOSPC, "No space left on device", f"/data/{CANARY}/x.dcm"))
    assert isinstance(full, RetryLater)
    assert str(full) == "destination fs: writing the instance failed (ENOSPC: No space left on device)"
    too_long = refused_or_retried("fs", OSError(errno.ENAMETOOLONG, "File name too long", f"/data/{CANARY}"))
    assert isinstance(too_long, DeliveryRefused) and CANARY not in str(too_long)


def test_a_failed_rename_leaves_no_temporary_link(tmp_path):
    src = tmp_path / "src.dcm"
    src.write_bytes(b"data")
    (tmp_path / "out" / "name.dcm").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        durable_place(src, tmp_path / "out" / "name.dcm", move=False)
    assert os.listdir(tmp_path / "out") == ["name.dcm"] and src.read_bytes() == b"data"
