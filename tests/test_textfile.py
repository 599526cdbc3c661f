"""Text inputs in any common encoding: recipes, prompt files, CSVs, sidecars and tar captions."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pisces_cli.cli.main import main
from pisces_cli.errors import UsageError
from pisces_cli.evaluation.prompt_suites import load_suite
from pisces_cli.io.prompts import collect_prompted_videos, read_prompt_mapping, read_tar_shards
from pisces_cli.textfile import decode_text, read_text

TEXT = "name: café — ünïcode ✓\nseed: 3\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_utf8_and_bom_marked_encodings_decode_to_the_same_text(tmp_path: Path, encoding: str):
    data = TEXT.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data  # Python's utf-16-be codec writes no BOM; Windows tools do
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    assert read_text(path) == TEXT


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (TEXT.encode("latin-1", errors="replace"), "Latin-1 or Windows-1252"),
        (TEXT.encode("utf-16-le"), "UTF-16 (little-endian) without a byte-order mark"),
        (TEXT.encode("utf-16-be"), "UTF-16 (big-endian) without a byte-order mark"),
        (bytes(range(256)) * 4, "binary data"),
        (b"seed: 1\x00\x00\n", "NUL characters"),
    ],
)
def test_other_bytes_are_refused_naming_the_file_and_what_they_look_like(data: bytes, words: str):
    with pytest.raises(UsageError) as info:
        decode_text(data, "some/prompts.csv")
    assert str(info.value).startswith("some/prompts.csv: ") and words in str(info.value)


def test_missing_and_folder_paths_are_usage_errors(tmp_path: Path):
    with pytest.raises(UsageError, match="no such file"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(UsageError, match="is a folder"):
        read_text(tmp_path)


def test_recipe_in_utf16_validates_and_latin1_or_binary_exit_2(tmp_path: Path, capsys):
    recipe = "name: utf16 café\nseed: 4\nscore: {batch_size: 2}\n"
    (tmp_path / "r16.yaml").write_bytes(recipe.encode("utf-16"))
    assert main(["validate", str(tmp_path / "r16.yaml")]) == 0
    (tmp_path / "l1.yaml").write_bytes(recipe.encode("latin-1"))
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)) * 8)
    for name, words in (("l1.yaml", "Latin-1"), ("bin.yaml", "binary data")):
        capsys.readouterr()
        assert main(["validate", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert name in err and words in err and "Traceback" not in err and "UnicodeDecodeError" not in err


def test_excel_utf16_prompts_csv_and_utf16_sidecar_give_prompts(tmp_path: Path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "prompts.csv").write_bytes("file,prompt\r\na.mp4,une vidéo\r\n".encode("utf-16"))
    assert read_prompt_mapping(tmp_path) == {"a.mp4": "une vidéo"}
    (tmp_path / "b.txt").write_bytes("ein Würfel\n".encode("utf-16"))
    items = {item.key: item for item in collect_prompted_videos(tmp_path)}
    assert items["a.mp4"].prompt == "une vidéo" and items["b.mp4"].prompt == "ein Würfel"


def test_undecodable_sidecar_is_that_videos_error_naming_the_file(tmp_path: Path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a.txt").write_bytes(b"a red cube")
    (tmp_path / "b.txt").write_bytes("un cube rouge, très".encode("latin-1"))
    items = {item.key: item for item in collect_prompted_videos(tmp_path)}
    assert items["a.mp4"].error is None
    error = items["b.mp4"].error
    assert error is not None and "b.txt" in error and "Latin-1" in error and "no prompt" not in error


def test_latin1_prompts_jsonl_is_a_usage_error_naming_it(tmp_path: Path):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "prompts.jsonl").write_bytes(
        json.dumps({"file": "a.mp4", "prompt": "é"}, ensure_ascii=False).encode("latin-1")
    )
    with pytest.raises(UsageError, match=r"prompts\.jsonl.*not UTF-8"):
        read_prompt_mapping(tmp_path)


def test_prompt_file_for_generate_in_utf16_and_bom_utf8(tmp_path: Path):
    (tmp_path / "p16.txt").write_bytes("a cat\nun chien\n".encode("utf-16"))
    (tmp_path / "p8.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "a cat"}).encode() + b"\n")
    assert [p.text for p in load_suite(tmp_path / "p16.txt")] == ["a cat", "un chien"]
    assert [p.text for p in load_suite(tmp_path / "p8.jsonl")] == ["a cat"]


def test_tar_captions_in_utf16_decode_and_undecodable_ones_are_error_rows(tmp_path: Path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as archive:
        for name, data in (
            ("k1.mp4", b"x"),
            ("k1.txt", "ein Würfel".encode("utf-16")),
            ("k2.mp4", b"x"),
            ("k2.txt", "très".encode("latin-1")),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    items = {item.key: item for item in read_tar_shards(str(shard))}
    assert items["k1"].prompt == "ein Würfel"
    assert items["k2"].error is not None and "k2.txt" in items["k2"].error and "Latin-1" in items["k2"].error


def test_a_fifo_or_device_is_refused_instead_of_blocking_the_read(tmp_path: Path, capsys):
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)  # nobody writes to it: reading it would wait for ever
    with pytest.raises(UsageError, match="not a regular file"):
        read_text(fifo)
    (tmp_path / "prompts.txt").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "prompts.txt")
    with pytest.raises(UsageError, match="not a regular file|neither a built-in suite"):
        load_suite(str(tmp_path / "prompts.txt"))
    with pytest.raises(UsageError, match="not a regular file"):
        read_text("/dev/null")  # a device (empty here; /dev/zero would never end)


def test_ascii_saved_as_utf16_without_a_bom_is_named_as_such_not_binary():
    with pytest.raises(UsageError, match="UTF-16 \\(little-endian\\) without a byte-order mark"):
        decode_text("name: x\nseed: 3\n".encode("utf-16-le"), "r.yaml")


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_preflight_counts_a_manifest_in_any_encoding_without_a_decode_error(tmp_path: Path, encoding: str):
    from pisces_cli.config import resolve_data
    from pisces_cli.preflight.run import _count_items

    manifest = tmp_path / "manifest.jsonl"
    lines = [json.dumps({"video": f"v{i}.mp4", "caption": f"café {i}"}, ensure_ascii=False) for i in range(3)]
    manifest.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    recipe = resolve_data({"data": {"manifest": str(manifest)}}, [], "t").recipe
    # UTF-16 is read like the stage reads it; Latin-1 is left to the stage's own clear error (exit 2)
    assert _count_items(recipe) == (3 if encoding == "utf-16" else None)
