"""Name templates: a rendered name never leaves its destination's root, and a refusal
names the fields, never their values."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import ConfigError, parse_config
from shared.templates import NAME_MAX_BYTES, UnsafeName, check_name_template, render_name

TEMPLATE = "{PatientID}/{StudyID}/{AccessionNumber}/{SOPInstanceUID}.dcm"


def values(**given):
    base = {"PatientID": "P1", "StudyID": "S1", "AccessionNumber": "A1", "SOPInstanceUID": "1.2.3"}
    return lambda address: {**base, **given}[address]


def test_safe_values_render_the_template():
    assert render_name(TEMPLATE, values()) == "P1/S1/A1/1.2.3.dcm"
    assert render_name("{PatientID|lower}-{StudyID}.dcm", values(PatientID="AB")) == "ab-S1.dcm"


@pytest.mark.parametrize("field, value, why", [
    ("PatientID", "..", "is '.' or '..' (the destination folder or the one above it)"),
    ("StudyID", ".", "is '.' or '..' (the destination folder or the one above it)"),
    ("AccessionNumber", "", "is empty"),
    ("PatientID", "a/b", "contains a path separator"),
    ("PatientID", "a\\b", "contains a path separator"),
    ("PatientID", "a\0b", "contains a NUL character"),
    ("PatientID", "CANARY" * 50, f"is 300 bytes long, over the file name limit of {NAME_MAX_BYTES}"),
])
def test_unsafe_values_are_refused_naming_the_field_not_the_value(field, value, why):
    with pytest.raises(UnsafeName) as caught:
        render_name(TEMPLATE, values(**{field: value}))
    assert str(caught.value) == f"{field} {why}"


def test_components_made_of_several_fields_name_them_all():
    with pytest.raises(UnsafeName, match=r"^the path component made of PatientID and StudyID is '\.' or '\.\.'"):
        render_name("{PatientID}{StudyID}/{SOPInstanceUID}", values(PatientID=".", StudyID="."))
    # a dot inside a component is no traversal
    assert render_name("{PatientID}.dcm", values(PatientID=".")) == "..dcm"


def test_names_over_1024_bytes_are_refused():
    long = "x" * 250
    with pytest.raises(UnsafeName, match="^the name is 1254 bytes long, over the limit of 1024$"):
        render_name("{PatientID}/{PatientID}/{PatientID}/{PatientID}/{PatientID}", values(PatientID=long))


@pytest.mark.parametrize("template", ["/data/{PatientID}.dcm", "../{PatientID}.dcm", "{PatientID}/../x.dcm",
                                      "{PatientID}//x.dcm", "{PatientID}/", "./{PatientID}", ""])
def test_config_refuses_name_templates_whose_own_text_leaves_the_root(template):
    with pytest.raises(ValueError):
        check_name_template(template)
    with pytest.raises(ConfigError, match="name_template"):
        parse_config({"destinations": [{"id": "fs", "type": "filesystem", "path": "out", "name_template": template}]})


def test_config_accepts_the_default_and_dotted_templates():
    for template in ("{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm", "{PatientID}..{StudyID}.dcm",
                     "a/.hidden/{SOPInstanceUID}"):
        assert check_name_template(template) == template


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=4, max_size=4))
def test_any_values_stay_inside_the_root_or_are_refused(parts):
    lookup = dict(zip(("PatientID", "StudyID", "AccessionNumber", "SOPInstanceUID"), parts)).__getitem__
    try:
        name = render_name("{PatientID}/{StudyID}{AccessionNumber}/{SOPInstanceUID}.dcm", lookup)
    except UnsafeName as exc:
        assert not any(len(p) >= 10 and p in str(exc) for p in parts), "a refusal never quotes a value"
        return
    root = "/dest/root"
    assert os.path.normpath(os.path.join(root, name)).startswith(root + "/")
    assert all(0 < len(c.encode("utf-8", "surrogateescape")) <= NAME_MAX_BYTES for c in name.split("/"))
    assert "\0" not in name and not name.startswith("/")
