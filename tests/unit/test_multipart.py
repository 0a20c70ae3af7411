"""multipart/related (RFC 2387 / RFC 2046 5.1, PS3.18 8.6): what is written parses
back byte for byte, wherever the chunks split it; limits, truncation and wrong
boundaries refuse the body and leave no temporary file behind."""

import random
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import pytest

from shared.dicomweb.multipart import (
    MalformedMultipart,
    MultipartTooLarge,
    boundary_of,
    parts_length,
    read_parts,
    related_content_type,
    spool_parts,
    write_parts,
)

BOUNDARY = "b0undary-42"
# bodies that look like framing: a delimiter's prefix, the boundary without the CRLF
# before it, CRLFs, nothing at all (a writer picks a boundary no body contains after
# a CRLF, RFC 2046 5.1.1)
BODIES = [
    b"DICM" + bytes(range(256)) * 3,
    b"\r\n--b0undary-4\r\nx--b0undary-42 not a delimiter: no CRLF before it\r\n",
    b"",
    b"\r\n\r\n\r",
]


def files(tmp_path: Path, bodies: list[bytes]) -> list[Path]:
    paths = []
    for i, body in enumerate(bodies):
        path = tmp_path / f"in{i}.dcm"
        path.write_bytes(body)
        paths.append(path)
    return paths


def written(tmp_path: Path, bodies=BODIES, boundary=BOUNDARY) -> bytes:
    paths = files(tmp_path, bodies)
    body = b"".join(write_parts(paths, boundary))
    assert parts_length(paths, boundary) == len(body)  # the Content-Length sent with it
    return body


def chunked(body: bytes, cuts) -> list[bytes]:
    edges = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:])]


def test_round_trip_through_temporary_files(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    parts = spool_parts([written(tmp_path)], BOUNDARY, tmp_dir=spool)
    assert [p.path.read_bytes() for p in parts] == BODIES
    assert [p.content_type for p in parts] == ["application/dicom"] * len(BODIES)
    assert all(p.path.parent == spool for p in parts)


def test_what_is_written_is_standard_multipart(tmp_path):
    """An independent parser (the standard library's) reads the same parts."""
    body = written(tmp_path)
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + related_content_type(BOUNDARY).encode() + b"\r\n\r\n" + body)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    assert [p.get_payload(decode=True) for p in message.iter_parts()] == BODIES


def test_a_body_split_anywhere_parses_the_same(tmp_path):
    expected = [b"DICM\r\n--b0undary-4", b"--b0undary-42--\r\n"]
    body = written(tmp_path, expected)
    for cut in range(1, len(body)):  # every single split point, delimiters included
        assert [p.data for p in read_parts(chunked(body, [cut]), BOUNDARY)] == expected, cut
    rng = random.Random(12)
    body = written(tmp_path)
    for _ in range(200):
        cuts = rng.sample(range(1, len(body)), rng.randint(1, 40))
        assert [p.data for p in read_parts(chunked(body, cuts), BOUNDARY)] == BODIES
    # one byte at a time, through temporary files
    assert [p.path.read_bytes() for p in spool_parts(chunked(body, range(1, len(body))), BOUNDARY,
                                                     tmp_dir=tmp_path)] == BODIES


def test_headers_preamble_and_epilogue():
    body = (b"a preamble to ignore\r\n--xyz\r\nContent-Type: Application/DICOM; transfer-syntax=1.2.840.10008.1.2.1\r\n"
            b"Content-Location: /studies/1\r\n\r\nfirst\r\n--xyz\r\n\r\nsecond, no headers\r\n--xyz--\r\nan epilogue")
    first, second = read_parts(body, "xyz")
    assert (first.content_type, first.data) == ("application/dicom", b"first")
    assert first.headers["content-location"] == "/studies/1"
    assert (second.content_type, second.headers, second.data) == (None, {}, b"second, no headers")


def test_content_length_of_a_part_is_held_to():
    good = b"--xyz\r\nContent-Length: 5\r\n\r\nhello\r\n--xyz--\r\n"
    assert read_parts(good, "xyz")[0].data == b"hello"
    with pytest.raises(MalformedMultipart):
        read_parts(good.replace(b"Length: 5", b"Length: 9"), "xyz")


def test_size_limit(tmp_path):
    body = written(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    assert len(spool_parts(chunked(body, [7, 300]), BOUNDARY, max_bytes=len(body), tmp_dir=spool)) == len(BODIES)
    for part in spool.iterdir():
        part.unlink()
    with pytest.raises(MultipartTooLarge) as caught:
        spool_parts(chunked(body, [7, 300]), BOUNDARY, max_bytes=len(body) - 1, tmp_dir=spool)
    assert caught.value.limit == len(body) - 1
    assert list(spool.iterdir()) == []  # parts already written are removed


def test_truncated_body_is_refused_and_leaves_no_file(tmp_path):
    body = written(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    # the CRLF after the closing delimiter is optional (RFC 2046 5.1.1): cut before it
    for cut in (len(body) - 3, len(body) - len(BOUNDARY) - 4, len(body) // 2, 3):
        with pytest.raises(MalformedMultipart):
            spool_parts([body[:cut]], BOUNDARY, tmp_dir=spool)
        assert list(spool.iterdir()) == []


def test_wrong_or_invalid_boundary(tmp_path):
    body = written(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    with pytest.raises(MalformedMultipart):  # framed with another boundary: no closing delimiter found
        spool_parts([body], "another-boundary", tmp_dir=spool)
    with pytest.raises(MalformedMultipart):  # a prefix of the real one: delimiter followed by garbage
        read_parts(body, BOUNDARY[:-1])
    assert list(spool.iterdir()) == []
    for bad in ("", "x" * 71, "a\r\nb", "trailing-space "):
        with pytest.raises(MalformedMultipart):
            read_parts(body, bad)
        with pytest.raises(MalformedMultipart):
            list(write_parts([], bad))


def test_boundary_of():
    assert boundary_of('multipart/related; type="application/dicom"; boundary=abc') == "abc"
    assert boundary_of('multipart/related; boundary="a b:c"; type="application/dicom"') == "a b:c"
    for value in ("multipart/related", 'multipart/related; type="application/dicom"', "", None,
                  f"multipart/related; boundary={'x' * 71}"):
        with pytest.raises(MalformedMultipart):
            boundary_of(value)
