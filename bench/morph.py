"""Morph benchmark: a 3-tag morph of one 512 x 512 CT (about 530 KB), end to end, versus
plain pydicom in the same run.

    .venv/bin/python bench/morph.py [--iterations 400] [--warmup 30]

Both sides read the same file from the page cache and write to the same directory.

* axiom: what the morph stage does for one instance (``shared/stages.morph``):
  ``read_instance``, ``apply_actions`` with the three
  ``set`` actions as a Plan carries them (JSON dicts, validated per call), then
  ``write_spliced`` (the source's bytes for every unchanged element, pydicom's encoding
  of the changed ones, file meta kept consistent, own transfer syntax) with
  ``write_instance`` as its fallback; both return the sha256 of the bytes written (the
  content address of the processed object). The run checks that the splice applied.
  Like the stage, the timed path reads without the completeness check: match has run
  it on the immutable ingest object already (its cost is shown in the breakdown).
* pydicom: ``dcmread``, three attribute assignments, ``save_as``.

Runs alternate between the two so drift hits both alike; the figure per side is the
MEDIAN wall time over ``--iterations``. A breakdown of the axiom path (each step timed
on its own, also medians) is printed so a miss can be attributed. Pixel Data is never
decoded: the output's Pixel Data bytes are checked equal to the input's, and
``pixel_array`` is made to fail if anything touches it.

The last printed line is ``morph_ratio_vs_pydicom=<axiom median / pydicom median>``
(goal: <= 1.2).
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

from shared.config import AppConfig  # noqa: E402
from shared.dicom.io import check_complete, read_instance, write_instance  # noqa: E402
from shared.dicom.original_attributes import OriginalAttributesPolicy  # noqa: E402
from shared.dicom.splice import write_spliced  # noqa: E402
from shared.morph import apply_actions  # noqa: E402
from shared.morph_services import MorphServices  # noqa: E402
from tests.support.dicomgen import make_ct_study  # noqa: E402

ACTIONS = [
    {"action": "set", "tag": "PatientID", "value": "BENCH-0001"},
    {"action": "set", "tag": "InstitutionName", "value": "AXIOM BENCH HOSPITAL"},
    {"action": "set", "tag": "StudyDescription", "value": "CT CHEST"},
]


def _no_pixel_array(self):  # pragma: no cover - only called on a bug
    raise AssertionError("pixel data was decoded")


def morph_write(src: Path, ds, out: Path) -> str:
    """The stage's write: splice, else pydicom."""
    sha = write_spliced(src, ds, None, out)
    return sha if sha is not None else write_instance(ds, out)


def axiom_once(src: Path, out: Path, services: MorphServices, policy=None) -> str:
    ds = read_instance(src, check=False)
    apply_actions(ds, ACTIONS, services, original_attributes=policy)
    return morph_write(src, ds, out)


def pydicom_once(src: Path, out: Path) -> None:
    ds = pydicom.dcmread(src)
    ds.PatientID = "BENCH-0001"
    ds.InstitutionName = "AXIOM BENCH HOSPITAL"
    ds.StudyDescription = "CT CHEST"
    ds.save_as(out)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()

    Dataset.pixel_array = property(_no_pixel_array)  # any decode fails loudly
    services = MorphServices.from_config(AppConfig())
    with tempfile.TemporaryDirectory(prefix="axiom-bench-morph-") as tmp:
        tmp = Path(tmp)
        [src] = make_ct_study(tmp / "in", 1)
        out_axiom, out_pydicom = tmp / "axiom.dcm", tmp / "pydicom.dcm"

        # correctness first: the splice applies and writes what write_instance writes
        ds = read_instance(src, check=False)
        apply_actions(ds, ACTIONS, services)
        assert write_spliced(src, ds, None, out_axiom) is not None, "the splice did not apply"
        ds = read_instance(src, check=False)
        apply_actions(ds, ACTIONS, services)
        assert write_instance(ds, out_pydicom) == axiom_once(src, out_axiom, services), "splice != write_instance"
        pydicom_once(src, out_pydicom)
        before, after = pydicom.dcmread(src), pydicom.dcmread(out_axiom)
        assert after.PixelData == before.PixelData, "pixel data changed"
        assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
        for action in ACTIONS:
            assert str(after[action["tag"]].value) == action["value"], action

        for _ in range(args.warmup):
            axiom_once(src, out_axiom, services)
            pydicom_once(src, out_pydicom)

        axiom_t, pydicom_t = [], []
        steps: dict[str, list[float]] = {k: [] for k in ("check_complete", "read_instance (incl. check)",
                                                         "apply_actions", "write_spliced (incl. sha256)",
                                                         "write_instance (fallback)")}
        policy = OriginalAttributesPolicy("AXIOM FLOW", datetime(2024, 1, 1, tzinfo=timezone.utc))
        axiom_oa_t = []
        for i in range(args.iterations):
            if i % 2:
                pydicom_t.append(timed(lambda: pydicom_once(src, out_pydicom)))
                axiom_t.append(timed(lambda: axiom_once(src, out_axiom, services)))
            else:
                axiom_t.append(timed(lambda: axiom_once(src, out_axiom, services)))
                pydicom_t.append(timed(lambda: pydicom_once(src, out_pydicom)))
            # breakdown and the Original Attributes variant, informative
            steps["check_complete"].append(timed(lambda: check_complete(src)))
            box = {}
            steps["read_instance (incl. check)"].append(timed(lambda: box.setdefault("ds", read_instance(src))))
            steps["apply_actions"].append(timed(lambda: apply_actions(box["ds"], ACTIONS, services)))
            steps["write_spliced (incl. sha256)"].append(timed(lambda: write_spliced(src, box["ds"], None, out_axiom)))
            steps["write_instance (fallback)"].append(timed(lambda: write_instance(box["ds"], out_axiom)))
            axiom_oa_t.append(timed(lambda: axiom_once(src, out_axiom, services, policy)))
            if i % 50 == 0:
                gc.collect()

        a, p = median_ms(axiom_t), median_ms(pydicom_t)
        print(f"python {platform.python_version()}, pydicom {pydicom.__version__}, {platform.machine()}, "
              f"{platform.processor() or platform.platform()}")
        print(f"input: {src.stat().st_size} bytes (512x512 CT, Explicit VR Little Endian), "
              f"{args.iterations} iterations, medians")
        print(f"pydicom read+set+write:        {p:7.3f} ms")
        print(f"axiom read+morph+write+sha256: {a:7.3f} ms")
        print("axiom breakdown (each step timed alone):")
        for name, samples in steps.items():
            print(f"  {name:28s} {median_ms(samples):7.3f} ms")
        print(f"axiom with Original Attributes: {median_ms(axiom_oa_t):7.3f} ms (informative)")
        print(f"morph_ratio_vs_pydicom={a / p:.3f}")


if __name__ == "__main__":
    main()
