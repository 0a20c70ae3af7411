"""The spanned view for legacy DIMSE clients: dcmtk's ``findscu`` against a listener of
``axiom-flow serve`` with ``spanner`` gets the merged studies of the eight Orthanc
servers of tests/support/spanner_bed.py (four asked by QIDO-RS, four by C-FIND), one
response per study, with every source's AE title."""

from __future__ import annotations

import subprocess

from pydicom import dcmread

from tests.support.procs import DCMTK_ENV, AxiomServer, free_port, require
from tests.support.spanner_bed import spanner_bed  # noqa: F401 (fixture)


def test_findscu_gets_the_merged_studies_from_the_spanned_sources(tmp_path, spanner_bed):  # noqa: F811
    bed = spanner_bed
    bed.set_delay(0)
    port = free_port()
    config = {
        "listeners": [{"id": "main", "ae_title": "AXIOM", "host": "127.0.0.1", "port": port, "spanner": "all"}],
        "sources": bed.sources,
        "spanners": [{"id": "all", "sources": [{"source": s["id"], "priority": n} for n, s in enumerate(bed.sources)],
                      "timeout_s": 10}],
    }
    out = tmp_path / "responses"
    out.mkdir()
    with AxiomServer(tmp_path / "data", config, dicom_port=port):
        found = subprocess.run(
            [require("findscu"), "-S", "-aec", "AXIOM", "-X", "-od", str(out),
             "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientName",
             "-k", "NumberOfStudyRelatedSeries", "-k", "RetrieveAETitle", "127.0.0.1", str(port)],
            capture_output=True, env=DCMTK_ENV, timeout=120)
    assert found.returncode == 0, found.stderr.decode(errors="replace")
    responses = [dcmread(p) for p in sorted(out.glob("*.dcm"))]
    by_uid = {str(ds.StudyInstanceUID): ds for ds in responses}
    assert len(by_uid) == len(responses) == len(bed.studies)  # one response per study, de-duplicated
    order = [s["id"] for s in bed.sources]
    ae_of = {s["id"]: s["ae_title"] for s in bed.sources if s["type"] == "dimse_poller"}
    for uid, ds in by_uid.items():
        holders = [sid for sid in order if uid in bed.truth[sid]]
        assert int(ds.NumberOfStudyRelatedSeries) == bed.truth[holders[0]][uid]  # the priority source's, not a sum
        assert str(ds.PatientName) == bed.names[holders[0]][uid]
        titles = ds.get("RetrieveAETitle")
        titles = [] if titles is None else ([titles] if isinstance(titles, str) else list(titles))
        assert sorted(titles) == sorted(ae_of[h] for h in holders if h in ae_of)
