"""A listener's allow-lists: what the config accepts (CIDR networks, AE titles) and
refuses naming the field, and which reason (PS3.8 9.3.4) each association gets from
:class:`shared.inputs.cstore.server.Admission`. Over the wire:
tests/integration/test_listener_allow_lists.py."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, Listener, parse_config
from shared.inputs.cstore.server import (
    CALLED_AE_NOT_RECOGNIZED,
    CALLING_AE_NOT_RECOGNIZED,
    NO_REASON_GIVEN,
    Admission,
)


def reason(listener: Listener, address: str = "127.0.0.1", called: str = "AXIOM", calling: str = "CT01"):
    refusal = Admission(listener).refusal(address, called, calling)
    return None if refusal is None else refusal.reason


def test_unset_lists_admit_everyone_whatever_the_called_ae_title():
    open_listener = Listener(id="main", ae_title="AXIOM")
    assert reason(open_listener, "203.0.113.9", called="NOT_AXIOM", calling="ANYONE") is None


def test_ae_titles_are_matched_without_padding_and_with_case():
    listener = Listener(id="main", called_ae_titles=["AXIOM ", "AXIOM_CT"], calling_ae_titles=["CT01"])
    assert listener.called_ae_titles == ["AXIOM", "AXIOM_CT"]
    assert reason(listener) is None and reason(listener, called="AXIOM_CT") is None
    assert reason(listener, called="axiom") == CALLED_AE_NOT_RECOGNIZED
    assert reason(listener, calling="CT02") == CALLING_AE_NOT_RECOGNIZED
    # both wrong: the called AE title is named, as pynetdicom's own check does
    assert reason(listener, called="X", calling="Y") == CALLED_AE_NOT_RECOGNIZED


@pytest.mark.parametrize("address,admitted", [
    ("10.1.2.3", True), ("10.255.0.1", True), ("11.0.0.1", False), ("192.168.1.7", True), ("192.168.1.8", False),
    ("fd00::5", True), ("fe80::1%eth0", False), ("::1", False),
    ("::ffff:10.9.9.9", True),  # an IPv4 peer of a dual-stack socket
    ("not-an-address", False),
])
def test_source_networks_ipv4_and_ipv6(address, admitted):
    listener = Listener(id="main", allowed_sources=["10.1.2.3/8", "192.168.1.7", "fd00::/8"])
    assert reason(listener, address) == (None if admitted else NO_REASON_GIVEN)


def test_the_source_address_is_judged_first():
    listener = Listener(id="main", allowed_sources=["10.0.0.0/8"], called_ae_titles=["AXIOM"])
    assert reason(listener, "127.0.0.1", called="OTHER") == NO_REASON_GIVEN


@pytest.mark.parametrize("field,value,path", [
    ("allowed_sources", ["10.0.0.0/33"], "listeners[main].allowed_sources[0]"),
    ("allowed_sources", ["10.0.0.0/8", "fd00::/129"], "listeners[main].allowed_sources[1]"),
    ("allowed_sources", ["pacs.example.org"], "listeners[main].allowed_sources[0]"),
    ("allowed_sources", [], "listeners[main].allowed_sources"),
    ("called_ae_titles", ["A_TITLE_OF_17_CHR"], "listeners[main].called_ae_titles[0]"),
    ("calling_ae_titles", ["  "], "listeners[main].calling_ae_titles[0]"),
])
def test_a_bad_allow_list_is_refused_naming_the_field(field, value, path):
    with pytest.raises(ConfigError) as caught:
        parse_config({"listeners": [{"id": "main", field: value}]})
    assert [p["path"] for p in caught.value.problems] == [path]

