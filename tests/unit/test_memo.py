"""PerObject: a derived value per immutable object, built once."""

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
