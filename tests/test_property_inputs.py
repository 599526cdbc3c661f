"""Property: random recipe mutations and random artifact headers/manifests fed to `validate` and `inspect`
never produce a traceback or an exit code other than 0 (accepted) or 2 (refused with a message)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from pisces_cli.cli.main import main
from pisces_cli.config.recipe import read_yaml_mapping, resolve_recipe_path

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["${output_dir}", "${nope}", "${seed}/x", "~/x", "auto", "latest", "null", "1e400", "-1"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, str(key)))
    return out


BASE = read_yaml_mapping(resolve_recipe_path("demo"))
KEY_PATHS = _paths(BASE)


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def _assert_clean(code: int, text: str) -> None:
    assert code in (0, 2), text
    assert "Traceback" not in text and "PISCES_DEBUG" not in text, text


def _mutate(data: dict, edits: list[tuple[int, str, Any]]) -> dict:
    out = json.loads(json.dumps(data))
    for index, action, value in edits:
        path = KEY_PATHS[index % len(KEY_PATHS)]
        node = out
        for part in path[:-1]:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            if not isinstance(node, dict):
                continue
            if action == "set":
                node[path[-1]] = value
            elif action == "delete":
                node.pop(path[-1], None)
            else:
                node[f"{path[-1]}_x"] = value
    return out


edits = st.lists(
    st.tuples(st.integers(min_value=0), st.sampled_from(["set", "delete", "add"]), values),
    min_size=1,
    max_size=4,
)


@FAST
@given(edits=edits)
def test_random_recipe_mutations_validate_cleanly(edits):
    data = _mutate(BASE, edits)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        _assert_clean(*_run(["validate", str(path)]))


@FAST
@given(
    key=st.sampled_from([".".join(p) for p in KEY_PATHS] + ["nope", "seed.x", "score.bootstrap_sample", ""]),
    raw=st.text(max_size=20) | values.map(lambda v: json.dumps(v, allow_nan=True)),
    removal=st.booleans(),
)
def test_random_overrides_validate_cleanly(key, raw, removal):
    override = f"~{key}" if removal else f"{key}={raw}"
    _assert_clean(*_run(["validate", "demo", override]))


@FAST
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_recipe_bytes_validate_cleanly(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_bytes(data)
        _assert_clean(*_run(["validate", str(path)]))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


header_fields = st.fixed_dictionaries(
    {},
    optional={
        "schema": st.sampled_from(["pisces.ot_map", "pisces.embeddings", "pisces.test"]) | values,
        "schema_version": values,
        "stage": values,
        "pisces_version": values,
        "created_utc": values,
        "recipe_hash": values,
        "recipe": values,
        "fingerprints": values | st.dictionaries(st.text(max_size=6), values, max_size=2),
        "tensors": values,
        "metrics": values,
        "extra": values | st.fixed_dictionaries({"map": values}),
    },
)


@FAST
@given(header=header_fields | values, as_json=st.booleans(), raw_text=st.booleans())
def test_random_headers_inspect_cleanly(header, as_json, raw_text):
    text = json.dumps(_json_safe(header)) if not raw_text else str(header)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.safetensors"
        save_file({"x": torch.zeros(2)}, str(path), metadata={"pisces": text})
        _assert_clean(*_run(["inspect", str(path), *(["--json"] if as_json else [])]))


@FAST
@given(
    manifest=st.fixed_dictionaries(
        {},
        optional={
            "schema": values,
            "complete": values,
            "shards": values
            | st.lists(
                st.dictionaries(st.sampled_from(["file", "index", "rows", "keys_file"]), values), max_size=2
            ),
        },
    )
    | values
)
def test_random_manifests_inspect_cleanly(manifest):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "art"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(_json_safe(manifest)))
        _assert_clean(*_run(["inspect", str(folder)]))
