"""Tag helpers over datasets: private blocks by creator (PS3.5 7.8.1), concrete item
addresses, private elements at every level, dictionary VRs (PS3.6)."""

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from shared.dicom.tags import creator_tag, item_prefix, locate, parse_path, private_elements, step_tag, tag_label


def dataset() -> Dataset:
    ds = Dataset()
    ds.PatientID = "P"
    block = ds.private_block(0x0019, "ACME 1", create=True)  # lands at (0019,0010), elements (0019,10xx)
    block.add_new(0x08, "LO", "top")
    items = []
    for n in range(2):
        item = Dataset()
        item.BeamName = f"B{n}"
        item.private_block(0x0011, "ACME 2", create=True).add_new(0x01, "LO", "inner")
        items.append(item)
    ds.BeamSequence = Sequence(items)
    return ds


def test_a_private_step_resolves_by_its_creator_block():
    ds = dataset()
    step = parse_path('(0019,"ACME 1",08)').leaf
    assert step_tag(ds, step) == Tag(0x0019, 0x1008)
    assert creator_tag(ds, step) == Tag(0x0019, 0x0010)
    absent = parse_path('(0019,"OTHER",08)').leaf
    assert step_tag(ds, absent) is None and creator_tag(ds, absent) is None
    assert step_tag(ds, absent, create=True) == Tag(0x0019, 0x1108)  # the next free block


def test_item_prefix_is_the_concrete_address_of_each_item():
    ds = dataset()
    path = parse_path("BeamSequence[*].BeamName")
    assert [item_prefix(ds, path, parent) for parent, _ in locate(ds, path)] == ["BeamSequence[0].", "BeamSequence[1]."]
    assert item_prefix(ds, path, Dataset()) == ""


def test_private_elements_are_found_in_every_item():
    ds = dataset()
    found = private_elements(ds["BeamSequence"], "BeamSequence")
    assert [label for _, _, label in found] == ["BeamSequence[0].(0011,0010)", "BeamSequence[0].(0011,1001)",
                                               "BeamSequence[1].(0011,0010)", "BeamSequence[1].(0011,1001)"]
    assert all(item[tag].value in ("ACME 2", "inner") for item, tag, _ in found)


def test_labels_and_dictionary_vrs():
    assert tag_label(Tag(0x0010, 0x0020)) == "PatientID"
    assert tag_label(Tag(0x0019, 0x1008)) == "(0019,1008)"
    assert parse_path("BeamSequence[0].BeamName").dictionary_vr() == "LO"
    siemens = parse_path('(0019,"SIEMENS MR HEADER",08)')
    assert siemens.dictionary_vr() is None  # a private leaf's VR needs its concrete tag
    assert siemens.dictionary_vr(Tag(0x0019, 0x1008)) == "CS"
