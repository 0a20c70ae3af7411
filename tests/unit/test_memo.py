"""PerObject: a derived value per immutable object, never handed to another object."""

from shared.memo import PerObject


class Config:
    pass


def test_built_once_per_object_and_never_for_another():
    builds = []
    derived = PerObject(lambda obj: builds.append(obj) or len(builds), max_entries=2)
    a, b = Config(), Config()
    assert derived(a) == 1 and derived(a) == 1 and derived(b) == 2
    assert builds == [a, b]
    c = Config()
    assert derived(c) == 3  # a third object: the older entries go
    assert derived(a) == 4 and builds[-1] is a


def test_a_recycled_id_is_not_mistaken_for_the_old_object():
    derived = PerObject(lambda obj: obj.value, max_entries=8)
    old = Config()
    old.value = "old"
    assert derived(old) == "old"
    old_id = id(old)
    del old
    for _ in range(1000):  # CPython reuses the freed slot for a same-sized object soon
        new = Config()
        new.value = "new"
        if id(new) == old_id:
            break
    assert derived(new) == "new"
