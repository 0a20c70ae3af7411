"""Every instance answered Success ends delivered, quarantined, held or failed, each but
the first with an exception record: a seeded random mix of inputs, rules, disabled and
down destinations, bad files and resends, through ``axiom-flow serve`` with dcmtk on
both sides (the GCP chain runs a smaller mix in tests/gcp/test_chain.py)."""

import pytest

from tests.e2e.test_bad_input import send_raw
from tests.support.invariant import check, make_mix, mix_config, sop_uids
from tests.support.procs import AxiomServer, free_port, storescu, wait_for


@pytest.mark.parametrize("seed", [1, 2])
def test_every_instance_answered_success_ends_somewhere_with_a_record(tmp_path, storescp, seed):
    mix = make_mix(tmp_path / "mix", 40, seed)
    config = mix_config({"ae_title": storescp.ae_title, "host": "127.0.0.1", "port": storescp.port},
                        down_port=free_port())
    with AxiomServer(tmp_path / "data", config) as server:
        decoded = [s.path for s in mix.sent if not s.raw]
        result = storescu(server.dicom_port, decoded)
        assert result.stderr.decode().count("Received Store Response (Success)") == len(decoded)
        for sent in mix.sent:
            if sent.raw:
                assert send_raw(server.dicom_port, sent.path) == 0x0000  # stored: match quarantines it

        def delivered():
            return {"archive": sop_uids((server.data_dir / "out").rglob("*.dcm")), "pacs": sop_uids(storescp.files())}

        def settled():
            server.wait_idle()
            return not check(mix, server.exceptions(), delivered())

        try:
            wait_for(settled, 90, interval=0.5, what="every instance to end somewhere")
        except TimeoutError:
            pass
        problems = check(mix, server.exceptions(), delivered())
        assert problems == []
        kinds = {s.kind for s in mix.sent}
        assert "valid" in kinds and len(kinds) > 2, "the mix must hold more than valid instances"
