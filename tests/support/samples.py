"""pydicom's test files in every common transfer syntax, ready to send with storescu."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pydicom.data import get_testdata_file

from tests.support.procs import DCMTK_ENV, require

# file and the storescu option that makes storescu send it in its own transfer syntax
# (for uncompressed files it otherwise converts)
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


def make_ts_samples(folder: Path, names=None, *, jpeg_lossless: bool = True) -> dict[str, tuple[Path, list[str]]]:
    """name -> (file, storescu options). Several pydicom samples share a SOP Instance
    UID, so each copy gets a new one from dcmodify, which keeps the transfer syntax and
    the pixel data as they are, and a Patient ID, which some lack and validation
    requires. With ``jpeg_lossless``, a JPEG Lossless SV1 file made by dcmtk's dcmcjpeg
    is added (pydicom ships none)."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = {}
    for name in names or TS_SAMPLES:
        filename, opts = TS_SAMPLES[name]
        samples[name] = (folder / f"{name}.dcm", opts)
        shutil.copy(get_testdata_file(filename), samples[name][0])
    if jpeg_lossless:
        samples["jpeg-lossless"] = (folder / "jpeg-lossless.dcm", ["-xs"])
        subprocess.run([require("dcmcjpeg"), get_testdata_file("CT_small.dcm"), str(samples["jpeg-lossless"][0])],
                       check=True, env=DCMTK_ENV)
    for path, _ in samples.values():
        subprocess.run([require("dcmodify"), "-nb", "-gin", "-i", "(0010,0020)=AXF-TS", str(path)],
                       check=True, env=DCMTK_ENV)
    return samples
