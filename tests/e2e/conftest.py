from pathlib import Path

import pytest

from tests.support.procs import StoreSCP
from tests.support.samples import make_ts_samples


@pytest.fixture(scope="session")
def ts_samples(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """name -> (file, storescu options), one per common transfer syntax."""
    return make_ts_samples(tmp_path_factory.mktemp("ts-samples"))


@pytest.fixture
def storescp(tmp_path):
    with StoreSCP(tmp_path / "storescp") as scp:
        yield scp
