"""Audit entries: appended with who, what, before and after, secrets masked at any depth."""

from shared.api import audit
from shared.api.permissions import Principal, Role
from tests.support.stageports import build_ports


def test_an_entry_records_who_what_and_masks_secrets(tmp_path):
    ports = build_ports(tmp_path, {})
    who = Principal(user_id="u1", email="ed@example.org", role=Role.EDITOR, via="api_key", key_prefix="ab12")
    before = {"id": "web", "auth": {"type": "basic", "username": "router", "password": "env:WEB_PASSWORD"}}
    after = {"id": "web", "auth": {"type": "bearer", "token": "gsm:web-token"}, "tls": {"private_key": "file:k.pem"}}
    first = audit.record(ports, who, "config.replace", "destinations/web", before=before, after=after)
    second = audit.record(ports, None, "users.create_admin", "users/u1")
    entries = ports.docs.list(audit.AUDIT)
    assert sorted(entries) == [first, second]  # ids sort by time
    entry = entries[first]
    assert (entry["email"], entry["role"], entry["via"], entry["action"]) == ("ed@example.org", "editor", "api_key",
                                                                            "config.replace")
    assert entry["before"]["auth"] == {"type": "basic", "username": "router", "password": "***"}
    assert entry["after"]["auth"]["token"] == "***" and entry["after"]["tls"]["private_key"] == "***"
    assert entries[second]["via"] == "cli" and entries[second]["user_id"] is None
