"""Caption templates, paraphrases and the parser of the synthetic world."""

from __future__ import annotations

import numpy as np
import pytest

from pisces_cli.world import caption, caption_with_claims, parse_caption, sample_scenes, world_vocabulary
from pisces_cli.world.captions import MOTION_PHRASES, N_TEMPLATES, CaptionClaims, ObjectClaim
from pisces_cli.world.spec import ObjectGroup, SceneSpec

SPECS = sample_scenes(77, 80)


@pytest.mark.parametrize("template", range(N_TEMPLATES))
def test_round_trip_every_template(template):
    seen_phrases = set()
    for index, spec in enumerate(SPECS):
        for draw in range(4):
            rng = np.random.default_rng([index, draw, template])
            text, claims = caption_with_claims(spec, rng, paraphrase=True, template=template)
            assert parse_caption(text) == claims, text
            seen_phrases.add(text)
    assert len(seen_phrases) > 200  # paraphrases really vary


def test_canonical_caption_states_everything():
    for spec in SPECS:
        text, claims = caption_with_claims(spec, paraphrase=False)
        assert parse_caption(text) == claims
        assert claims.background == spec.background
        for group, claim in zip(spec.groups, claims.objects, strict=True):
            speed = None if group.direction == "still" else group.speed
            expected = ObjectClaim(group.color, group.shape, group.count, group.size, group.direction, speed)
            assert claim == expected


def test_known_captions():
    spec = SceneSpec(
        groups=[
            ObjectGroup("circle", "red", "small", "left", "fast", [(10.0, 10.0)]),
            ObjectGroup("square", "blue", "large", "up", "slow", [(40.0, 40.0), (20.0, 40.0)]),
        ],
        background="gray",
        frames=8,
        size=64,
    )
    assert caption(spec, paraphrase=False) == (
        "a small red circle moves left quickly and two large blue squares move up slowly on a gray background"
    )
    orange = SceneSpec(groups=[ObjectGroup("diamond", "orange", "small", "still", "slow", [(16.0, 16.0)])])
    texts = {caption(orange, seed) for seed in range(40)}
    assert all(" a orange" not in t and not t.startswith("a orange") for t in texts)
    assert any("an orange diamond" in t for t in texts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a red circle moves left",
            CaptionClaims([ObjectClaim(color="red", shape="circle", count=1, direction="left")]),
        ),
        (
            "Two blue squares drifting upward on a grey background.",
            CaptionClaims([ObjectClaim(color="blue", shape="square", count=2, direction="up")], "gray"),
        ),
        (
            "a small green triangle sliding to the right",
            CaptionClaims(
                [ObjectClaim(color="green", shape="triangle", count=1, size="small", direction="right")]
            ),
        ),
        (
            "there are three big white diamonds falling fast, while a yellow circle rests in place "
            "against a dark blue background",
            CaptionClaims(
                [
                    ObjectClaim("white", "diamond", 3, "large", "down", "fast"),
                    ObjectClaim("yellow", "circle", 1, None, "still", None),
                ],
                "dark blue",
            ),
        ),
        ("a sunny beach", CaptionClaims([], None)),
    ],
)
def test_parse_hand_written(text, expected):
    assert parse_caption(text) == expected


def test_vocabulary_covers_every_emitted_word():
    vocabulary = set(world_vocabulary())
    assert vocabulary == set(sorted(vocabulary))
    for index, spec in enumerate(SPECS):
        for template in range(N_TEMPLATES):
            text = caption(spec, np.random.default_rng([index, template]), template=template)
            words = text.replace(",", " ").split()
            assert set(words) <= vocabulary, set(words) - vocabulary
    for table in MOTION_PHRASES.values():
        for triple in table:
            assert all(set(p.split()) <= vocabulary for p in triple)
    assert {"red", "circle", "circles", "left", "dark", "background"} <= vocabulary
    assert len(vocabulary) < 120


def test_caption_determinism_and_bad_template():
    spec = SPECS[0]
    assert caption(spec, 3) == caption(spec, 3)
    assert len({caption(spec, seed) for seed in range(30)}) > 5
    with pytest.raises(ValueError):
        caption(spec, 0, template=N_TEMPLATES)


def test_empty_groups_are_skipped_and_empty_scene_rejected():
    from pisces_cli.errors import UsageError

    spec = SceneSpec(
        groups=[
            ObjectGroup("circle", "red", "small", "left", "fast", []),
            ObjectGroup("square", "blue", "large", "up", "slow", [(20.0, 40.0)]),
        ]
    )
    text, claims = caption_with_claims(spec, paraphrase=False)
    assert "red" not in text and [c.color for c in claims.objects] == ["blue"]
    spec.groups = spec.groups[:1]
    with pytest.raises(UsageError, match="no objects"):
        caption(spec)
