import pytest

from tests.support.stageports import build_ports


@pytest.fixture
def make_ports(tmp_path):
    """``make_ports(config_dict)``: stage ports over the local adapters in ``tmp_path``."""
    return lambda config: build_ports(tmp_path, config)
