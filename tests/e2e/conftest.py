import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.support.procs import DCMTK_ENV, StoreSCP, require

# pydicom test files by transfer syntax, with the storescu option that makes storescu
# send each in its own transfer syntax (for uncompressed files it otherwise converts).
TS_SAMPLES = {
    "explicit-le": ("CT_small.dcm", ["-xe"]),
    "implicit-le": ("MR_small_implicit.dcm", ["-xi"]),
    "explicit-be": ("MR_small_bigendian.dcm", ["-xb"]),
    "deflated": ("image_dfl.dcm", ["-xd"]),
    "jpeg-baseline": ("SC_rgb_jpeg_dcmtk.dcm", ["-xy"]),
    "jpeg-ls": ("MR_small_jpeg_ls_lossless.dcm", ["-xt"]),
    "jpeg-2000": ("MR_small_jp2klossless.dcm", ["-xv"]),
    "rle": ("MR_small_RLE.dcm", ["-xr"]),
}


@pytest.fixture(scope="session")
def ts_samples(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """name -> (file, storescu options), including a JPEG Lossless SV1 file that dcmtk's
    dcmcjpeg makes at test time (pydicom ships none). Several pydicom samples share a
    SOP Instance UID, so each copy gets a new one from dcmodify, which keeps the
    transfer syntax and the pixel data as they are."""
    folder = tmp_path_factory.mktemp("ts-samples")
    samples = {}
    for name, (filename, opts) in TS_SAMPLES.items():
        samples[name] = (folder / f"{name}.dcm", opts)
        shutil.copy(get_testdata_file(filename), samples[name][0])
    samples["jpeg-lossless"] = (folder / "jpeg-lossless.dcm", ["-xs"])
    subprocess.run([require("dcmcjpeg"), get_testdata_file("CT_small.dcm"), str(samples["jpeg-lossless"][0])],
                   check=True, env=DCMTK_ENV)
    for path, _ in samples.values():
        # and a Patient ID, which some samples lack and validation requires by default
        subprocess.run([require("dcmodify"), "-nb", "-gin", "-i", "(0010,0020)=AXF-TS", str(path)],
                       check=True, env=DCMTK_ENV)
    return samples


@pytest.fixture
def storescp(tmp_path):
    with StoreSCP(tmp_path / "storescp") as scp:
        yield scp
