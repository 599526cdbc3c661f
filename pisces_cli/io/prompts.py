"""Where videos and their prompts come from: folders, manifests, WebDataset tar shards.

Every source yields :class:`VideoItem` records. A video without a usable prompt, or a
manifest line naming a missing file, becomes an item with ``error`` set — never an
exception — so one bad entry does not stop a run. Malformed *index* files (bad JSON,
missing columns) raise :class:`~pisces_cli.errors.UsageError` naming the file and line.

Folder prompts (:func:`list_prompted_folder`), sources in precedence order:

(a) ``mapping``: ``prompts.jsonl`` (one object per line with a file key — ``file``, ``path``
    or ``video`` — and a prompt key — ``prompt``, ``caption`` or ``text``) or ``prompts.csv``
    (a header row with the same column names) at the folder root. The file value is the
    video's path relative to the folder (POSIX ``/``); a bare file name also matches a video
    of that name in a sub-folder when exactly one video has it. ``data.prompts`` names another
    such file to use instead (``mapping_file``). A video listed twice with different prompts is refused.
(b) ``sidecar``: ``NAME.txt`` next to ``NAME.mp4`` (surrounding whitespace stripped).

Every text file (mappings, sidecars, tar captions) is read by :mod:`pisces_cli.textfile`: UTF-8 or
BOM-marked UTF-16/32. An undecodable mapping file is a UsageError; an undecodable sidecar or tar caption
is that video's error row, naming the file and what its bytes look like.
(c) ``filename``: VBench names ``{prompt}-{index}.mp4`` → the stem with a trailing
    ``-<digits>`` removed (:func:`prompt_from_filename`).

``prompt_source="auto"`` uses (a), else (b), per video; (c) is used only for names of VBench's
form (a ``-<digits>`` index before the extension) and only when neither (a) nor (b) gives a prompt
for *any* video of the folder (a plain VBench folder), or for every video without (a)/(b) when the
caller asks for it (``prompts_from_names``, the recipe's ``data.prompts_from_names``). Otherwise a
video without (a)/(b) gets an error row rather than a guessed prompt. ``"mapping"``, ``"sidecar"``
and ``"filename"`` use that source alone.

Every entry of a folder is accounted for (:func:`scan_folder`): a video, a prompt file, or a
skipped entry with its reason (hidden, broken link, other file type, pisces' own files).

WebDataset shards (:func:`read_tar_shards`): uncompressed ``.tar`` files read with the stdlib
``tarfile``; a sample is the members sharing a key (the member path up to the first ``.`` of
its base name): ``KEY.mp4`` (or another video extension) plus ``KEY.txt``, or ``KEY.json``
with a ``caption``/``prompt``/``text`` field. Shard lists may use globs and brace lists
(``data/{00000..00003}.tar``, ``{a,b}.tar``). Member bytes are read by offset
(:func:`read_item_bytes`) and decoded from memory (decord and PyAV both accept file objects).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.io.jsonl import iter_jsonl
from pisces_cli.textfile import decode_text, read_text

__all__ = [
    "CAPTION_KEYS",
    "FILE_KEYS",
    "VIDEO_EXTENSIONS",
    "FolderListing",
    "FolderScan",
    "SkippedFile",
    "TarMember",
    "VideoItem",
    "collect_prompted_videos",
    "expand_shard_spec",
    "is_vbench_name",
    "list_prompted_folder",
    "list_tar_shards",
    "list_videos",
    "prompt_from_filename",
    "read_item_bytes",
    "read_manifest",
    "read_prompt_mapping",
    "read_tar_shards",
    "scan_folder",
]

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".webm", ".mov", ".mkv", ".gif"})
FILE_KEYS: tuple[str, ...] = ("file", "path", "video")
CAPTION_KEYS: tuple[str, ...] = ("prompt", "caption", "text")
MAPPING_FILES: tuple[str, ...] = ("prompts.jsonl", "prompts.csv")

PromptSource = Literal["auto", "mapping", "sidecar", "filename"]


@dataclass(frozen=True)
class TarMember:
    """Location of a video inside an uncompressed tar shard (bytes ``[offset, offset + size)``)."""

    shard: str
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class VideoItem:
    """One video to process.

    Attributes:
        key: stable identifier (relative path for folders, the sample key for shards).
        source: a file path, or ``"shard.tar:KEY"`` for a tar member.
        prompt: the prompt/caption, or ``None`` when there is none.
        error: why this item cannot be used (e.g. ``"no prompt for a.mp4"``), else ``None``.
        member: where the bytes sit when the video lives in a tar shard, else ``None``.
    """

    key: str
    source: str
    prompt: str | None
    error: str | None = None
    member: TarMember | None = None


# --------------------------------------------------------------------------------------------------
# folders


@dataclass(frozen=True)
class SkippedFile:
    """A file (or folder, ``path`` ending in ``/``) of a video folder that is neither scored nor a prompt.

    ``path`` is relative to the folder (POSIX); ``reason`` says why it is not a video to process.
    """

    path: str
    reason: str


#: reasons that name pisces' own files: listed, but not worth a console note on every run.
PISCES_FILE_REASONS: frozenset[str] = frozenset({"pisces output folder", "pisces file"})

#: files pisces itself writes into a video folder (``generate``), besides the prompt mapping.
_PISCES_FOLDER_FILES: frozenset[str] = frozenset({"manifest.json"})


@dataclass
class FolderScan:
    """Every entry under a video folder, sorted into videos, prompt inputs and skipped entries.

    Attributes:
        videos: video files (:data:`VIDEO_EXTENSIONS`, case-insensitive), sorted by relative path.
        prompt_files: relative paths of the files read as prompts (mapping file, ``NAME.txt`` sidecars).
        skipped: everything else, each with its reason (hidden entries, broken links, other file types,
            pisces' own files and output folders).
    """

    videos: list[Path]
    prompt_files: list[str]
    skipped: list[SkippedFile]


def _is_pisces_output_folder(folder: Path) -> bool:
    """A folder written by ``score`` / ``eval`` (its ``settings.json`` names a pisces schema)."""
    marker = folder / "settings.json"
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith("pisces.")


def scan_folder(
    folder: str | os.PathLike, *, recursive: bool = True, exclude: Sequence[str | os.PathLike] = ()
) -> FolderScan:
    """Sort every entry under ``folder`` (see :class:`FolderScan`); nothing is left out silently.

    Skipped, with a reason: hidden files and folders (a name starting with ``.``), broken symbolic links,
    links to folders (not followed), folders that cannot be listed (no permission), entries that are not
    regular files, files of other types,
    ``score``/``eval`` output folders, and sub-folders when ``recursive`` is false. Symbolic links to
    video files are videos. The folders in ``exclude`` (the run's own output folder) are left out
    without a mention: they are not part of the input.

    Raises:
        UsageError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"video folder {root} does not exist or is not a folder")
    excluded = {Path(p).resolve() for p in exclude}
    videos: list[Path] = []
    others: list[Path] = []
    skipped: list[SkippedFile] = []

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    def unreadable(error: OSError) -> None:  # a folder os.walk cannot list: its files are not silently lost
        folder_path = Path(error.filename)
        where = _printable(rel(folder_path)) + "/" if folder_path != root else "./"
        skipped.append(SkippedFile(where, f"cannot list this folder ({error.strerror or error})"))

    for current, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        here = Path(current)
        keep = []
        for name in sorted(dirnames):
            path = here / name
            if not _utf8_name(name):
                skipped.append(SkippedFile(_printable(rel(path)) + "/", NOT_UTF8))
            elif name.startswith("."):
                skipped.append(SkippedFile(rel(path) + "/", "hidden folder"))
            elif path.is_symlink():
                skipped.append(SkippedFile(rel(path) + "/", "link to a folder (not followed)"))
            elif path.resolve() in excluded:
                continue  # the run's own output folder is not part of its input
            elif _is_pisces_output_folder(path):
                skipped.append(SkippedFile(rel(path) + "/", "pisces output folder"))
            elif not recursive:
                skipped.append(SkippedFile(rel(path) + "/", "sub-folder (not searched)"))
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            if not _utf8_name(name) or not _utf8_name(rel(path)):
                skipped.append(SkippedFile(_printable(rel(path)), NOT_UTF8))
            elif name.startswith("."):
                skipped.append(SkippedFile(rel(path), "hidden file"))
            elif path.is_symlink() and not path.exists():
                skipped.append(SkippedFile(rel(path), "broken symbolic link"))
            elif not path.is_file():
                skipped.append(SkippedFile(rel(path), "not a regular file"))
            elif path.suffix.lower() in VIDEO_EXTENSIONS:
                videos.append(path)
            else:
                others.append(path)
    video_stems = {(v.parent, v.stem) for v in videos}
    prompt_files: list[str] = []
    for path in others:
        mapping_file = path.parent == root and path.name in MAPPING_FILES
        if mapping_file or (path.suffix.lower() == ".txt" and (path.parent, path.stem) in video_stems):
            prompt_files.append(rel(path))
        elif path.parent == root and path.name in _PISCES_FOLDER_FILES:
            skipped.append(SkippedFile(rel(path), "pisces file"))
        else:
            kind = path.suffix.lower() or "no extension"
            skipped.append(SkippedFile(rel(path), f"not a video file ({kind})"))
    videos.sort(key=rel)
    skipped.sort(key=lambda entry: entry.path)
    return FolderScan(videos, sorted(prompt_files), skipped)


#: why a file whose name is not valid UTF-8 is skipped: its name cannot be written into the UTF-8 tables
NOT_UTF8 = "file name is not valid UTF-8 (rename it to score it)"


def _utf8_name(name: str) -> bool:
    """Whether ``name`` (as the OS gave it, undecodable bytes as surrogates) is valid UTF-8 text."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    """``name`` with undecodable bytes shown as ``\\xNN``, for messages and tables."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def list_videos(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Video files under ``folder`` (extensions :data:`VIDEO_EXTENSIONS`, case-insensitive).

    Sorted by relative POSIX path; what is not listed, and why, is :func:`scan_folder`'s ``skipped``.
    """
    return scan_folder(folder, recursive=recursive).videos


_INDEX_SUFFIX = re.compile(r"-\d+$")


def prompt_from_filename(name: str) -> str:
    """VBench rule: the file stem with one trailing ``-<digits>`` removed (``"a cat-3.mp4"`` → ``"a cat"``)."""
    stem = Path(name).name
    for ext in VIDEO_EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return _INDEX_SUFFIX.sub("", stem)


def is_vbench_name(name: str) -> bool:
    """Whether ``name`` has VBench's form ``{prompt}-{index}.EXT`` (a non-empty prompt, then ``-<digits>``)."""
    stem = Path(name).stem
    return bool(_INDEX_SUFFIX.search(stem)) and bool(prompt_from_filename(name).strip())


def _pick(record: dict, keys: Sequence[str]) -> tuple[str | None, object]:
    for key in keys:
        if key in record:
            return key, record[key]
    return None, None


def _add_mapping_entry(
    mapping: dict[str, str], lines: dict[str, int], path: Path, line_no: int, file_value: str, text: str
) -> None:
    """Add ``file_value → text`` to ``mapping``; a file listed again with another prompt is refused
    (which of the two would be the right prompt?); listed again with the same prompt is harmless."""
    rel = _normalise_rel(file_value)
    if rel in mapping and mapping[rel] != text:
        raise UsageError(
            f"{path} line {line_no}: {rel!r} is listed again with another prompt (first on line {lines[rel]}); "
            "keep one line per video"
        )
    mapping[rel] = text
    lines.setdefault(rel, line_no)


def _read_jsonl_mapping(path: Path) -> dict[str, str]:
    mapping: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line_no, record in iter_jsonl(path):
        file_key, file_value = _pick(record, FILE_KEYS)
        text_key, text_value = _pick(record, CAPTION_KEYS)
        if file_key is None or not isinstance(file_value, str) or not file_value:
            raise UsageError(f"{path} line {line_no}: needs a file name under one of {', '.join(FILE_KEYS)}")
        if text_key is None or not isinstance(text_value, str):
            raise UsageError(f"{path} line {line_no}: needs a string under one of {', '.join(CAPTION_KEYS)}")
        _add_mapping_entry(mapping, lines, path, line_no, file_value, text_value)
    return mapping


def _read_csv_mapping(path: Path) -> dict[str, str]:
    mapping: dict[str, str] = {}
    lines: dict[str, int] = {}
    text = read_text(path)
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle, strict=True)  # an unclosed quote must not swallow the rows after it
        limit = csv.field_size_limit()
        csv.field_size_limit(
            max(limit, len(text))
        )  # a long prompt is a prompt (the default stops at 128 KiB)
        try:
            columns = reader.fieldnames or []
            file_col = next((c for c in FILE_KEYS if c in columns), None)
            text_col = next((c for c in CAPTION_KEYS if c in columns), None)
            if file_col is None or text_col is None:
                raise UsageError(
                    f"{path} line 1: header {columns} needs a file column ({', '.join(FILE_KEYS)}) "
                    f"and a prompt column ({', '.join(CAPTION_KEYS)})"
                )
            for row in reader:
                file_value, text_value = row.get(file_col), row.get(text_col)
                if not file_value or text_value is None:
                    raise UsageError(
                        f"{path} line {reader.line_num}: empty {file_col!r} or missing {text_col!r}"
                    )
                _add_mapping_entry(mapping, lines, path, reader.line_num, file_value, text_value)
        except csv.Error as exc:
            raise UsageError(f"{path} line {reader.reader.line_num}: not valid CSV ({exc})") from exc
        finally:
            csv.field_size_limit(limit)
    return mapping


def _normalise_rel(name: str) -> str:
    text = name.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def read_prompt_mapping(
    folder: str | os.PathLike, mapping_file: str | os.PathLike | None = None
) -> dict[str, str] | None:
    """The folder's ``prompts.jsonl`` or ``prompts.csv`` as {relative path: prompt}; ``None`` if absent.

    ``mapping_file`` (``data.prompts``): read that JSONL/CSV file instead (its paths relative to ``folder``).

    Raises:
        UsageError: both files exist (ambiguous), ``mapping_file`` is missing, or a line is malformed (message
            names the line).
    """
    if mapping_file is not None:
        path = Path(mapping_file)
        if not path.is_file():
            raise UsageError(f"data.prompts: {mapping_file} does not exist")
        return _read_csv_mapping(path) if path.suffix.lower() == ".csv" else _read_jsonl_mapping(path)
    root = Path(folder)
    present = [root / name for name in MAPPING_FILES if (root / name).is_file()]
    if not present:
        return None
    if len(present) > 1:
        raise UsageError(f"{root} holds both prompts.jsonl and prompts.csv; keep one")
    path = present[0]
    return _read_jsonl_mapping(path) if path.suffix == ".jsonl" else _read_csv_mapping(path)


def _read_sidecar(video: Path, sidecars: dict[tuple[Path, str], Path]) -> str | None:
    """The sidecar of ``video``, stripped; ``None`` without one. ``sidecars``: the folder's sidecar files
    by (folder, stem), as :func:`scan_folder` found them (``NAME.txt``, the extension in any case, like
    the videos' own: ``CLIP.MP4`` + ``CLIP.TXT``).

    Raises:
        UsageError: the sidecar cannot be read as text (the message names it and its encoding).
    """
    sidecar = sidecars.get((video.parent, video.stem))
    return None if sidecar is None else read_text(sidecar).strip()


@dataclass
class FolderListing:
    """The items of a video folder (one per video, prompt or error) and what :func:`scan_folder` skipped."""

    items: list[VideoItem]
    skipped: list[SkippedFile]
    prompt_files: list[str]


def list_prompted_folder(
    folder: str | os.PathLike,
    *,
    prompt_source: PromptSource = "auto",
    prompts_from_names: bool = False,
    recursive: bool = True,
    exclude: Sequence[str | os.PathLike] = (),
    mapping_file: str | os.PathLike | None = None,
) -> FolderListing:
    """(video, prompt) items for every video under ``folder``, sorted by relative path, plus the skipped entries.

    See the module docstring for the prompt sources and their precedence, and :func:`scan_folder` for
    what is skipped. Items whose prompt cannot be found carry ``error="no prompt for REL (...)"``; an
    empty prompt text is an error too. ``prompts_from_names``: a video with no mapping entry and no
    sidecar takes its file name as prompt (:func:`prompt_from_filename`), whatever its form.

    Raises:
        UsageError: unknown ``prompt_source``, ``"mapping"`` without a mapping file, a malformed
            mapping file, or a missing folder.
    """
    if prompt_source not in ("auto", "mapping", "sidecar", "filename"):
        raise UsageError(
            f"unknown prompt_source {prompt_source!r}; expected auto, mapping, sidecar or filename"
        )
    root = Path(folder)
    scan = scan_folder(root, recursive=recursive, exclude=exclude)
    videos = scan.videos
    mapping = read_prompt_mapping(root, mapping_file) if prompt_source in ("auto", "mapping") else None
    if prompt_source == "mapping" and mapping is None:
        raise UsageError(f"prompt_source='mapping' but {root} has no prompts.jsonl or prompts.csv")
    mapping = mapping or {}
    name_counts = Counter(v.name for v in videos)
    by_name = {n: m for n, m in mapping.items() if "/" not in n and name_counts[n] == 1}

    def from_mapping(rel: str, video: Path) -> str | None:
        if rel in mapping:
            return mapping[rel]
        return by_name.get(video.name)

    sidecars: dict[tuple[Path, str], Path] = {}
    for rel_text in sorted(scan.prompt_files, key=lambda name: not name.endswith(".txt")):
        path = root / rel_text
        if path.suffix.lower() == ".txt":  # NAME.txt before NAME.TXT when a folder holds both
            sidecars.setdefault((path.parent, path.stem), path)
    found: list[tuple[str, Path, str | None, str | None]] = []  # (rel, path, prompt, unreadable sidecar)
    for video in videos:
        rel = video.relative_to(root).as_posix()
        prompt = unreadable = None
        if prompt_source in ("auto", "mapping"):
            prompt = from_mapping(rel, video)
        if prompt is None and prompt_source in ("auto", "sidecar"):
            try:
                prompt = _read_sidecar(video, sidecars)
            except UsageError as exc:  # this video's error row, not the run's end
                unreadable = str(exc)
        found.append((rel, video, prompt, unreadable))

    # file names: asked for (prompt_source=filename, prompts_from_names), or a plain VBench folder
    # (auto, no mapping entry or sidecar for any video) for the names of VBench's form
    vbench_folder = prompt_source == "auto" and all(
        prompt is None and unreadable is None for _, _, prompt, unreadable in found
    )
    tried = {
        "auto": "prompts.jsonl/csv, NAME.txt",
        "mapping": "prompts.jsonl/csv",
        "sidecar": "NAME.txt",
        "filename": "file name",
    }[prompt_source]
    hint = (
        "; a file name is a prompt only in VBench's form PROMPT-INDEX.mp4 in a folder without prompt files, "
        "or with data.prompts_from_names: true (--prompts-from-names)"
        if prompt_source == "auto"
        else ""
    )
    items: list[VideoItem] = []
    for rel, video, prompt, unreadable in found:
        if unreadable is not None:
            items.append(VideoItem(rel, str(video), None, unreadable))
            continue
        if prompt is None and (
            prompt_source == "filename"
            or (prompts_from_names and prompt_source != "mapping")
            or (vbench_folder and is_vbench_name(video.name))
        ):
            prompt = prompt_from_filename(video.name)
        if prompt is None:
            items.append(VideoItem(rel, str(video), None, f"no prompt for {rel} (looked in: {tried}{hint})"))
        elif not prompt.strip():
            items.append(VideoItem(rel, str(video), None, f"empty prompt for {rel}"))
        else:
            items.append(VideoItem(rel, str(video), prompt))
    return FolderListing(items, scan.skipped, scan.prompt_files)


def collect_prompted_videos(
    folder: str | os.PathLike,
    *,
    prompt_source: PromptSource = "auto",
    recursive: bool = True,
    prompts_from_names: bool = False,
) -> list[VideoItem]:
    """The items of :func:`list_prompted_folder` (without the list of skipped entries)."""
    return list_prompted_folder(
        folder, prompt_source=prompt_source, prompts_from_names=prompts_from_names, recursive=recursive
    ).items


# --------------------------------------------------------------------------------------------------
# manifests


def read_manifest(path: str | os.PathLike) -> list[VideoItem]:
    """Embedding-data manifest: JSONL lines ``{"video": PATH, "caption": TEXT}``.

    Relative paths are relative to the manifest's folder. Blank lines are skipped. A line
    naming a missing file becomes an error item (``"...: file not found (manifest line N)"``).

    Raises:
        UsageError: the manifest is missing, a line is not a JSON object, or lacks a string
            ``video``/``caption`` (message names the manifest and the line number).
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise UsageError(f"manifest {manifest} does not exist")
    base = manifest.parent
    items: list[VideoItem] = []
    for line_no, record in iter_jsonl(manifest):
        video, caption = record.get("video"), record.get("caption")
        if not isinstance(video, str) or not video:
            raise UsageError(f"{manifest} line {line_no}: missing or non-string 'video'")
        if not isinstance(caption, str):
            raise UsageError(f"{manifest} line {line_no}: missing or non-string 'caption'")
        resolved = Path(video) if Path(video).is_absolute() else base / video
        error = None if resolved.is_file() else f"{video}: file not found (manifest line {line_no})"
        items.append(VideoItem(video, str(resolved), caption, error))
    return items


# --------------------------------------------------------------------------------------------------
# WebDataset tar shards

_BRACE = re.compile(r"\{([^{}]*)\}")


def _expand_braces(pattern: str) -> list[str]:
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo_text, hi_text = numeric.groups()
        lo, hi = int(lo_text), int(hi_text)
        if hi < lo:
            raise UsageError(f"bad shard range {{{body}}} in {pattern!r}: end before start")
        width = len(lo_text) if lo_text.startswith("0") or len(lo_text) == len(hi_text) else 0
        options = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        options = body.split(",")
    out: list[str] = []
    for option in options:
        out.extend(_expand_braces(head + option + tail))
    return out


def expand_shard_spec(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Shard paths from a path, glob, brace pattern (``{0..3}``, ``{a,b}``) or a list of them.

    Brace-expanded names that contain no glob characters must exist. Order: the order of the
    spec, each glob's matches sorted; duplicates removed.

    Raises:
        UsageError: a pattern matches nothing.
    """
    patterns = [os.fspath(spec)] if isinstance(spec, (str, os.PathLike)) else [os.fspath(s) for s in spec]
    shards: list[str] = []
    for pattern in patterns:
        for expanded in _expand_braces(pattern):
            if glob.has_magic(expanded):
                matches = sorted(glob.glob(expanded))
                if not matches:
                    raise UsageError(f"shard pattern {expanded!r} matches no file")
            else:
                if not Path(expanded).is_file():
                    raise UsageError(f"shard {expanded} does not exist")
                matches = [expanded]
            shards.extend(m for m in matches if m not in shards)
    if not shards:
        raise UsageError(f"shard spec {spec!r} names no shard")
    return shards


def _split_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first '.' of the base name; the rest is the field."""
    folder, _, base = member_name.rpartition("/")
    stem, dot, extension = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, (dot + extension).lower()


def _caption_from_json(data: bytes, name: str) -> str | None:
    try:
        record = json.loads(decode_text(data, name))
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    _, value = _pick(record, CAPTION_KEYS)
    return value if isinstance(value, str) else None


def _read_one_shard(shard: str) -> tuple[list[VideoItem], list[SkippedFile]]:
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, mode="r:") as archive:
            members = [m for m in archive.getmembers() if m.isfile()]
            for member in members:
                key, field = _split_key(member.name)
                samples.setdefault(key, {})[field] = member
            captions: dict[str, str | None] = {}
            unreadable: dict[str, str] = {}
            for key, fields in samples.items():
                caption = None
                text_member = fields.get(".txt") or fields.get(".json")
                if text_member is not None:
                    handle = archive.extractfile(text_member)
                    raw, name = (handle.read() if handle else b""), f"{shard}:{text_member.name}"
                    try:
                        is_txt = text_member is fields.get(".txt")
                        caption = decode_text(raw, name).strip() if is_txt else _caption_from_json(raw, name)
                    except UsageError as exc:  # an undecodable caption is this sample's error row
                        unreadable[key] = str(exc)
                captions[key] = caption
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PiscesRuntimeError(f"cannot read tar shard {shard}: {exc}") from exc
    items: list[VideoItem] = []
    skipped: list[SkippedFile] = []
    for key in sorted(samples):
        fields = samples[key]
        # the field's last extension decides (".mp4", also ".webm.mp4" or ".lowres.mp4")
        video_field = next(
            (f for f in sorted(fields) if "." + f.rsplit(".", 1)[-1] in VIDEO_EXTENSIONS), None
        )
        if video_field is None:  # not a video sample (metadata only, or a video type pisces does not read)
            kinds = ", ".join(f or "no extension" for f in sorted(fields))
            skipped.append(SkippedFile(f"{shard}:{key}", f"no video member ({kinds})"))
            continue
        info = fields[video_field]
        member = TarMember(shard, info.name, info.offset_data, info.size)
        source = f"{shard}:{key}"
        caption = captions.get(key)
        if key in unreadable:
            items.append(VideoItem(key, source, None, unreadable[key], member))
        elif caption is None or not caption.strip():
            items.append(
                VideoItem(
                    key, source, None, f"no prompt for {source} (needs {key}.txt or {key}.json)", member
                )
            )
        else:
            items.append(VideoItem(key, source, caption, None, member))
    return items, skipped


def list_tar_shards(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> FolderListing:
    """Video samples of WebDataset tar shards, in shard order then sorted key order, and the samples
    skipped for having no video member (``SHARD:KEY`` with the fields they hold).

    Raises:
        UsageError: the spec matches no shard. PiscesRuntimeError: a shard is not a readable tar.
    """
    listing = FolderListing([], [], [])
    for shard in expand_shard_spec(spec):
        items, skipped = _read_one_shard(shard)
        listing.items.extend(items)
        listing.skipped.extend(skipped)
    return listing


def read_tar_shards(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[VideoItem]:
    """The items of :func:`list_tar_shards`."""
    return list_tar_shards(spec).items


def read_item_bytes(item: VideoItem) -> bytes:
    """Encoded bytes of a tar-member item (read by offset, no extraction).

    Raises:
        UsageError: the item is a plain file (decode its ``source`` path instead).
        PiscesRuntimeError: the shard cannot be read.
    """
    if item.member is None:
        raise UsageError(f"{item.source} is not a tar member; decode the file path directly")
    member = item.member
    try:
        with open(member.shard, "rb") as handle:
            handle.seek(member.offset)
            data = handle.read(member.size)
    except OSError as exc:
        raise PiscesRuntimeError(f"cannot read {member.name} from {member.shard}: {exc}") from exc
    if len(data) != member.size:
        raise PiscesRuntimeError(
            f"{member.shard} is truncated: {member.name} needs {member.size} bytes, got {len(data)}"
        )
    return data
