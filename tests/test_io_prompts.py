"""Prompt sources of pisces_cli.io.prompts: folder mappings, sidecars, VBench names, manifests, tar shards."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.io.prompts import (
    VideoItem,
    collect_prompted_videos,
    expand_shard_spec,
    list_tar_shards,
    list_videos,
    prompt_from_filename,
    read_item_bytes,
    read_manifest,
    read_prompt_mapping,
    read_tar_shards,
    scan_folder,
)
from pisces_cli.io.video import read_frames
from pisces_cli.io.writer import write_mp4


def touch(path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def by_key(items: list[VideoItem]) -> dict[str, VideoItem]:
    return {item.key: item for item in items}


# ------------------------------------------------------------------------------------------------ listing


def test_list_videos_is_recursive_sorted_and_filters_extensions(tmp_path):
    for name in [
        "b.mp4",
        "a.webm",
        "sub/c.MOV",
        "sub/deeper/d.gif",
        "e.mkv",
        "notes.txt",
        ".hidden.mp4",
        "x.avi",
    ]:
        touch(tmp_path / name)
    rel = [p.relative_to(tmp_path).as_posix() for p in list_videos(tmp_path)]
    assert rel == ["a.webm", "b.mp4", "e.mkv", "sub/c.MOV", "sub/deeper/d.gif"]
    flat = [p.name for p in list_videos(tmp_path, recursive=False)]
    assert flat == ["a.webm", "b.mp4", "e.mkv"]
    with pytest.raises(UsageError, match="does not exist"):
        list_videos(tmp_path / "nope")


@pytest.mark.parametrize(
    ("name", "prompt"),
    [
        ("a cat-3.mp4", "a cat"),
        ("a-b-c-12.mp4", "a-b-c"),
        ("no index.mp4", "no index"),
        ("x-1-2.gif", "x-1"),
        ("A person is dancing.-0.mp4", "A person is dancing."),
        ("trailing-.mp4", "trailing-"),
    ],
)
def test_prompt_from_filename(name, prompt):
    assert prompt_from_filename(name) == prompt


# ------------------------------------------------------------------------------------------------ folder precedence


def test_auto_precedence_mapping_over_sidecar_over_nothing(tmp_path):
    for name in ["one-0.mp4", "two-0.mp4", "three-0.mp4"]:
        touch(tmp_path / name)
    (tmp_path / "one-0.txt").write_text("sidecar one\n")
    (tmp_path / "two-0.txt").write_text("  sidecar two  ")
    lines = [
        {"file": "one-0.mp4", "prompt": "mapped one"},
        {"path": "./unrelated.mp4", "caption": "no such video"},
    ]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = by_key(collect_prompted_videos(tmp_path))
    assert items["one-0.mp4"].prompt == "mapped one"  # (a) beats (b)
    assert items["two-0.mp4"].prompt == "sidecar two"  # (b), stripped
    # (c) is not used because other videos are mapped: an error row, not a guess
    three = items["three-0.mp4"]
    assert three.prompt is None
    assert three.error is not None and three.error.startswith("no prompt for three-0.mp4")
    assert list(items) == ["one-0.mp4", "three-0.mp4", "two-0.mp4"]


def test_auto_uses_filenames_when_nothing_else_maps(tmp_path):
    for name in ["a dog runs-0.mp4", "a dog runs-1.mp4", "sub/a cat sits-4.mp4"]:
        touch(tmp_path / name)
    items = collect_prompted_videos(tmp_path)
    assert [(i.key, i.prompt, i.error) for i in items] == [
        ("a dog runs-0.mp4", "a dog runs", None),
        ("a dog runs-1.mp4", "a dog runs", None),
        ("sub/a cat sits-4.mp4", "a cat sits", None),
    ]
    assert items[0].source == str(tmp_path / "a dog runs-0.mp4")


def test_explicit_sources(tmp_path):
    touch(tmp_path / "v-0.mp4")
    touch(tmp_path / "w-1.mp4")
    (tmp_path / "v-0.txt").write_text("side v")
    (tmp_path / "prompts.csv").write_text("video,text\nv-0.mp4,mapped v\n")
    filename = by_key(collect_prompted_videos(tmp_path, prompt_source="filename"))
    assert filename["v-0.mp4"].prompt == "v" and filename["w-1.mp4"].prompt == "w"
    sidecar = by_key(collect_prompted_videos(tmp_path, prompt_source="sidecar"))
    assert sidecar["v-0.mp4"].prompt == "side v"
    assert sidecar["w-1.mp4"].error == "no prompt for w-1.mp4 (looked in: NAME.txt)"
    mapping = by_key(collect_prompted_videos(tmp_path, prompt_source="mapping"))
    assert mapping["v-0.mp4"].prompt == "mapped v"
    assert mapping["w-1.mp4"].prompt is None and "no prompt for w-1.mp4" in mapping["w-1.mp4"].error


def test_mapping_source_requires_a_mapping_file_and_known_names(tmp_path):
    touch(tmp_path / "a.mp4")
    with pytest.raises(UsageError, match="no prompts.jsonl or prompts.csv"):
        collect_prompted_videos(tmp_path, prompt_source="mapping")
    with pytest.raises(UsageError, match="unknown prompt_source 'guess'"):
        collect_prompted_videos(tmp_path, prompt_source="guess")


def test_mapping_matches_relative_paths_and_unique_bare_names(tmp_path):
    for name in ["x/clip.mp4", "y/clip.mp4", "z/solo.mp4", "z/other.mp4"]:
        touch(tmp_path / name)
    lines = [
        {"video": "x/clip.mp4", "text": "x clip"},
        {"video": "clip.mp4", "text": "ambiguous bare name"},
        {"video": "solo.mp4", "text": "unique bare name"},
    ]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    items = by_key(collect_prompted_videos(tmp_path))
    assert items["x/clip.mp4"].prompt == "x clip"
    assert items["y/clip.mp4"].prompt is None  # a bare name shared by two videos matches neither
    assert items["z/solo.mp4"].prompt == "unique bare name"
    assert items["z/other.mp4"].error.startswith("no prompt for z/other.mp4")


def test_empty_prompt_is_an_error_row(tmp_path):
    touch(tmp_path / "a.mp4")
    (tmp_path / "a.txt").write_text("   \n")
    (item,) = collect_prompted_videos(tmp_path)
    assert item.prompt is None and item.error == "empty prompt for a.mp4"


def test_mapping_csv_with_quotes_and_commas(tmp_path):
    (tmp_path / "prompts.csv").write_text('file,caption\n"a.mp4","a cat, a dog, and ""quotes"""\n')
    assert read_prompt_mapping(tmp_path) == {"a.mp4": 'a cat, a dog, and "quotes"'}


def test_mapping_errors_name_the_file_and_line(tmp_path):
    assert read_prompt_mapping(tmp_path) is None
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"file": "a.mp4", "prompt": "ok"}\n{"file": "b.mp4", "prompt": \n')
    with pytest.raises(UsageError, match=r"prompts.jsonl line 2: invalid JSON"):
        read_prompt_mapping(tmp_path)
    bad.write_text('{"file": "a.mp4", "prompt": "ok"}\n\n{"file": "b.mp4"}\n')
    with pytest.raises(UsageError, match=r"prompts.jsonl line 3: needs a string under one of prompt"):
        read_prompt_mapping(tmp_path)
    bad.write_text('["a.mp4", "p"]\n')
    with pytest.raises(UsageError, match=r"line 1: expected a JSON object"):
        read_prompt_mapping(tmp_path)
    bad.unlink()
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("name,prompt\na.mp4,p\n")
    with pytest.raises(UsageError, match=r"prompts.csv line 1: header .* needs a file column"):
        read_prompt_mapping(tmp_path)
    csv_file.write_text("file,prompt\na.mp4,p\n,q\n")
    with pytest.raises(UsageError, match=r"prompts.csv line 3"):
        read_prompt_mapping(tmp_path)
    bad.write_text("")
    with pytest.raises(UsageError, match="both prompts.jsonl and prompts.csv"):
        read_prompt_mapping(tmp_path)


# ------------------------------------------------------------------------------------------------ manifests


def test_manifest_resolves_relative_paths_and_marks_missing_files(tmp_path):
    folder = tmp_path / "data"
    touch(folder / "clips" / "a.mp4")
    touch(tmp_path / "elsewhere.mp4")
    manifest = folder / "train.jsonl"
    manifest.write_text(
        json.dumps({"video": "clips/a.mp4", "caption": "first"})
        + "\n\n"
        + json.dumps({"video": str(tmp_path / "elsewhere.mp4"), "caption": "absolute"})
        + "\n"
        + json.dumps({"video": "clips/gone.mp4", "caption": "missing"})
        + "\n"
    )
    items = read_manifest(manifest)
    assert [(i.key, i.prompt, i.error) for i in items] == [
        ("clips/a.mp4", "first", None),
        (str(tmp_path / "elsewhere.mp4"), "absolute", None),
        ("clips/gone.mp4", "missing", "clips/gone.mp4: file not found (manifest line 4)"),
    ]
    assert items[0].source == str(folder / "clips" / "a.mp4")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"video": "a.mp4", "caption": "ok"}', "{not json"], r"train.jsonl line 2: invalid JSON"),
        (['{"video": "a.mp4"}'], r"train.jsonl line 1: missing or non-string 'caption'"),
        (
            ['{"video": "a.mp4", "caption": "ok"}', "", '{"caption": "c"}'],
            r"line 3: missing or non-string 'video'",
        ),
        (['{"video": 5, "caption": "c"}'], r"line 1: missing or non-string 'video'"),
        (["[1, 2]"], r"line 1: expected a JSON object"),
    ],
)
def test_manifest_errors_name_line_numbers(tmp_path, lines, message):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=message):
        read_manifest(manifest)


def test_missing_manifest(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_manifest(tmp_path / "none.jsonl")


# ------------------------------------------------------------------------------------------------ tar shards


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory):
    frames = np.zeros((6, 32, 32, 3), np.uint8)
    for t in range(6):
        frames[t, 8:16, 4 * t : 4 * t + 8] = (255, 128, 0)
    path = tmp_path_factory.mktemp("tar_src") / "clip.mp4"
    write_mp4(path, frames, 8)
    return path.read_bytes(), path


@pytest.fixture
def shards(tmp_path, clip_bytes):
    data, _ = clip_bytes
    with tarfile.open(tmp_path / "00000.tar", "w") as archive:
        add_member(archive, "s001.mp4", data)
        add_member(archive, "s001.txt", "a red fox, café \n".encode())
        add_member(archive, "s002.json", json.dumps({"caption": "from json", "width": 32}).encode())
        add_member(archive, "s002.mp4", data)
        add_member(archive, "s003.mp4", data)  # no caption
        add_member(archive, "s004.txt", b"caption without video")
    with tarfile.open(tmp_path / "00001.tar", "w") as archive:
        add_member(archive, "dir/s010.mp4", data)
        add_member(archive, "dir/s010.json", json.dumps({"prompt": "nested key"}).encode())
        add_member(archive, "s011.webm.mp4", data)  # key is up to the first dot: "s011"
        add_member(archive, "s011.txt", b"multi-dot")
    return tmp_path


def test_tar_shards_group_members_by_key(shards):
    items = read_tar_shards(str(shards / "{00000..00001}.tar"))
    summary = [(i.key, i.prompt, i.error is None) for i in items]
    assert summary == [
        ("s001", "a red fox, café", True),
        ("s002", "from json", True),
        ("s003", None, False),
        ("dir/s010", "nested key", True),
        ("s011", "multi-dot", True),
    ]
    s003 = items[2]
    assert s003.source == f"{shards / '00000.tar'}:s003"
    assert s003.error == f"no prompt for {s003.source} (needs s003.txt or s003.json)"


def test_tar_samples_without_a_video_are_listed_as_skipped_not_dropped(shards, clip_bytes):
    data, _ = clip_bytes
    with tarfile.open(shards / "00002.tar", "w") as archive:
        add_member(archive, "s020.avi", data)  # a video type pisces does not read
        add_member(archive, "s020.txt", b"a cat")
    listing = list_tar_shards(str(shards / "*.tar"))
    assert [i.key for i in listing.items] == ["s001", "s002", "s003", "dir/s010", "s011"]
    assert [(s.path, s.reason) for s in listing.skipped] == [
        (f"{shards / '00000.tar'}:s004", "no video member (.txt)"),
        (f"{shards / '00002.tar'}:s020", "no video member (.avi, .txt)"),
    ]


def test_tar_member_bytes_decode_like_the_file(shards, clip_bytes):
    data, path = clip_bytes
    items = read_tar_shards(str(shards / "*.tar"))
    member_data = read_item_bytes(items[0])
    assert member_data == data
    np.testing.assert_array_equal(read_frames(member_data), read_frames(path))
    with pytest.raises(UsageError, match="not a tar member"):
        read_item_bytes(VideoItem("k", str(path), "p"))


def test_shard_spec_expansion(shards):
    first, second = str(shards / "00000.tar"), str(shards / "00001.tar")
    assert expand_shard_spec(str(shards / "{00000..00001}.tar")) == [first, second]
    assert expand_shard_spec(str(shards / "0000{1,0}.tar")) == [second, first]
    assert expand_shard_spec(str(shards / "*.tar")) == [first, second]
    assert expand_shard_spec([second, str(shards / "*.tar")]) == [second, first]
    assert expand_shard_spec(shards / "00000.tar") == [first]
    with pytest.raises(UsageError, match="does not exist"):
        expand_shard_spec(str(shards / "{00000..00002}.tar"))
    with pytest.raises(UsageError, match="matches no file"):
        expand_shard_spec(str(shards / "*.tgz"))


def test_corrupt_shard_is_a_runtime_error(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(PiscesRuntimeError, match="cannot read tar shard .*bad.tar"):
        read_tar_shards(str(bad))


def test_generated_folder_round_trip_recovers_exact_prompts(tmp_path):
    """A generator writes vbench_filename() names plus prompts.jsonl; reading back gives the exact prompts."""
    from pisces_cli.io.writer import vbench_filename

    prompts = ["A cat plays piano.", "left/right split", "很长的提示 " * 40, "A cat plays piano"]
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    records = []
    for prompt in prompts:
        for index in range(2):
            name = vbench_filename(prompt, index)
            write_mp4(tmp_path / name, frames, 8)
            records.append({"file": name, "prompt": prompt})
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records))
    items = collect_prompted_videos(tmp_path)
    assert len(items) == 8 and all(item.error is None for item in items)
    assert sorted(item.prompt for item in items) == sorted(p for p in prompts for _ in range(2))
    # without the mapping only the plain names would spell their prompts
    (tmp_path / "prompts.jsonl").unlink()
    guessed = {item.prompt for item in collect_prompted_videos(tmp_path)}
    assert "A cat plays piano." in guessed and "left/right split" not in guessed


def test_a_mapping_file_given_by_the_recipe_replaces_the_folders(tmp_path):
    """data.prompts: the prompts come from that file (paths relative to the video folder)."""
    from pisces_cli.io.prompts import list_prompted_folder

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "prompts.jsonl").write_text('{"file": "a.mp4", "prompt": "from the folder"}\n')
    other = tmp_path.parent / f"{tmp_path.name}-other.jsonl"
    other.write_text('{"file": "a.mp4", "prompt": "from data.prompts"}\n')
    assert list_prompted_folder(tmp_path).items[0].prompt == "from the folder"
    assert list_prompted_folder(tmp_path, mapping_file=other).items[0].prompt == "from data.prompts"
    with pytest.raises(UsageError, match="data.prompts"):
        list_prompted_folder(tmp_path, mapping_file=tmp_path / "missing.jsonl")


def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason(tmp_path):
    import os

    from pisces_cli.io.prompts import list_prompted_folder

    (tmp_path / "ok.mp4").write_bytes(b"x")
    (tmp_path / "ok.txt").write_text("a prompt")
    os.close(os.open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp4"), os.O_CREAT | os.O_WRONLY))
    listing = list_prompted_folder(tmp_path)
    assert [item.key for item in listing.items] == ["ok.mp4"]
    assert [(s.path, s.reason) for s in listing.skipped] == [
        ("caf\\xe9.mp4", "file name is not valid UTF-8 (rename it to score it)")
    ]


def test_mapping_refuses_a_video_listed_twice_with_different_prompts(tmp_path):
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("file,prompt\na.mp4,a cat\nb.mp4,x\n./a.mp4,a dog\n")
    with pytest.raises(UsageError, match=r"prompts.csv line 4: 'a.mp4' is listed again .*first on line 2"):
        read_prompt_mapping(tmp_path)
    csv_file.write_text("file,prompt\na.mp4,a cat\na.mp4,a cat\n")  # the same line twice is harmless
    assert read_prompt_mapping(tmp_path) == {"a.mp4": "a cat"}
    csv_file.unlink()
    (tmp_path / "prompts.jsonl").write_text(
        '{"file": "a.mp4", "prompt": "a cat"}\n{"video": "a.mp4", "caption": "a dog"}\n'
    )
    with pytest.raises(UsageError, match=r"prompts.jsonl line 2: 'a.mp4' is listed again"):
        read_prompt_mapping(tmp_path)


def test_mapping_csv_reads_long_prompts_and_refuses_an_unclosed_quote(tmp_path):
    csv_file = tmp_path / "prompts.csv"
    long_prompt = "a red ball " * 20_000  # 220 kB: past the csv module's default field limit
    csv_file.write_text(f"file,prompt\na.mp4,{long_prompt}\nb.mp4,b\n")
    assert read_prompt_mapping(tmp_path) == {"a.mp4": long_prompt, "b.mp4": "b"}
    csv_file.write_text('file,prompt\na.mp4,"a cat\nb.mp4,a dog\n')  # would swallow b.mp4's row
    with pytest.raises(UsageError, match=r"prompts.csv line 3: not valid CSV"):
        read_prompt_mapping(tmp_path)
    csv_file.write_text('file,prompt\na.mp4,a "quoted" word\n')  # quotes inside a plain field are text
    assert read_prompt_mapping(tmp_path) == {"a.mp4": 'a "quoted" word'}


def test_a_folder_that_cannot_be_listed_is_reported_not_silently_lost(tmp_path, monkeypatch):
    import os

    touch(tmp_path / "a.mp4")
    touch(tmp_path / "locked" / "b.mp4")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):  # what chmod 000 does to anyone but root
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_folder(tmp_path)
    assert [v.name for v in scan.videos] == ["a.mp4"]
    assert [(s.path, s.reason) for s in scan.skipped] == [
        ("locked/", "cannot list this folder (Permission denied)")
    ]


def test_a_sidecar_with_an_uppercase_extension_gives_its_videos_prompt(tmp_path):
    # the scan already counted CLIP.TXT as CLIP.MP4's prompt file; the reader looked only for CLIP.txt
    touch(tmp_path / "CLIP.MP4")
    (tmp_path / "CLIP.TXT").write_text("a cat\n")
    touch(tmp_path / "sub" / "b.mp4")
    (tmp_path / "sub" / "b.Txt").write_text("a dog")
    touch(tmp_path / "c.mp4")
    (tmp_path / "c.txt").write_text("lower wins")
    (tmp_path / "c.TXT").write_text("upper")
    items = by_key(collect_prompted_videos(tmp_path))
    assert {key: item.prompt for key, item in items.items()} == {
        "CLIP.MP4": "a cat",
        "c.mp4": "lower wins",
        "sub/b.mp4": "a dog",
    }
