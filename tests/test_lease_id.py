"""External ids: UUIDv8 values that carry a process id and a fencing token."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator import lease_id

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True)
tokens = st.integers(min_value=1, max_value=2**42 - 1)


@given(name=names, token=tokens)
def test_compose_parse_round_trip(name, token):
    external_id = lease_id.compose(name, token)
    assert lease_id.parse(str(external_id)) == (lease_id.process_id(name), token)


@given(name=names, token=st.integers(min_value=1, max_value=lease_id.MAX_TOKEN))
def test_the_formatted_id_is_the_uuids_text(name, token):
    assert lease_id.external_id(name, token) == str(lease_id.compose(name, token))


@given(name=names, token=tokens)
def test_ids_are_version_8_rfc_variant(name, token):
    external_id = lease_id.compose(name, token)
    assert external_id.version == 8
    assert external_id.variant == uuid.RFC_4122
    # The canonical text form: 36 characters, the version nibble is '8', variant is 8..b.
    text = str(external_id)
    assert len(text) == 36
    assert text[14] == "8"
    assert text[19] in "89ab"


@given(name=names, token=tokens)
def test_parse_refuses_the_uppercase_form(name, token):
    external_id = str(lease_id.compose(name, token))
    assert lease_id.parse(external_id.upper()) is None


@given(name=names, first=tokens, second=tokens)
def test_distinct_tokens_give_distinct_ids(name, first, second):
    same = lease_id.compose(name, first) == lease_id.compose(name, second)
    assert same == (first == second)


def test_process_id_fits_80_bits_and_differs_by_name():
    ids = {lease_id.process_id(f"proc-{i}") for i in range(1000)}
    assert len(ids) == 1000
    assert all(0 <= pid < 2**80 for pid in ids)
    assert lease_id.process_id("nightly-invoices") == lease_id.process_id("nightly-invoices")


def test_extreme_tokens_round_trip():
    for token in (1, 2, 2**41, 2**42 - 1):
        assert lease_id.parse(str(lease_id.compose("p", token))) == (
            lease_id.process_id("p"),
            token,
        )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-uuid",
        "0",
        "12345",
        "g" * 32,
        "zzzzzzzz-zzzz-8zzz-azzz-zzzzzzzzzzzz",
        "b608a696-7197-42b1-bbbd",
        "b608a696-7197-82b1-bbbd-cabb962cbaad-00",
        " ",
        "../../etc/passwd",
    ],
)
def test_parse_rejects_non_uuids(text):
    assert lease_id.parse(text) is None


@given(value=st.uuids(version=4))
def test_parse_rejects_uuid4(value):
    assert lease_id.parse(str(value)) is None


@given(value=st.uuids(version=1))
def test_parse_rejects_uuid1(value):
    assert lease_id.parse(str(value)) is None


@given(name=names)
def test_parse_rejects_token_zero(name):
    assert lease_id.parse(str(lease_id.compose(name, 0))) is None


@given(name=names, token=tokens, variant_bits=st.sampled_from([0b00, 0b01, 0b11]))
def test_parse_rejects_other_variants(name, token, variant_bits):
    value = lease_id.compose(name, token).int
    value = value & ~(0b11 << 62) | variant_bits << 62
    assert lease_id.parse(str(uuid.UUID(int=value))) is None


def test_nil_and_max_uuids_are_rejected():
    assert lease_id.parse(str(uuid.UUID(int=0))) is None
    assert lease_id.parse(str(uuid.UUID(int=2**128 - 1))) is None
