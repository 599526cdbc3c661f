"""The plain-Python safetensors header reader: what it accepts and how it refuses damaged files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from pisces_cli.safetensors_header import SafetensorsHeaderError, read_safetensors_header


def test_it_reads_what_the_safetensors_library_wrote(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file(
        {"dims": torch.tensor([3, 4]), "w": torch.zeros(2, 3, dtype=torch.bfloat16)}, str(path), {"k": "v"}
    )
    header = read_safetensors_header(path)
    assert header.metadata == {"k": "v"}
    assert header.tensors["w"].shape == (2, 3) and header.tensors["w"].dtype == "BF16"
    assert header.read_values("dims") == [3, 4]


def raw_file(path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


@pytest.mark.parametrize(
    ("header", "data", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, b"", "nested too deeply"),
        (b"not json", b"", "not JSON"),
        (
            json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode(),
            b"\0" * 4,
            "truncated",
        ),
        (
            json.dumps({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(),
            b"\0" * 8,
            "bytes for F32",
        ),
        (
            json.dumps({"x": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 1]}}).encode(),
            b"\0",
            "unknown dtype",
        ),
        (json.dumps({"__metadata__": {"a": 1}}).encode(), b"", "object of strings"),
    ],
)
def test_damaged_headers_are_refused_with_a_reason(tmp_path, header, data, reason):
    path = tmp_path / "bad.safetensors"
    raw_file(path, header, data)
    with pytest.raises(SafetensorsHeaderError, match=reason):
        read_safetensors_header(path)


def test_a_file_shorter_than_its_claimed_header(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(SafetensorsHeaderError, match="claims"):
        read_safetensors_header(path)
