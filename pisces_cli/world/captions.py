"""Captions of world scenes (templates + paraphrases) and their parser.

Each object group becomes one clause ``<noun phrase> <motion phrase>``, e.g.
``two small blue squares drifting upward quickly``. Clauses are joined with ``and`` /
``, while``; an optional background phrase ends the caption (``on a gray background``).

Templates (``template=`` argument):

* 0 -- finite verbs: ``a red circle moves left and two blue squares rise``
* 1 -- participles: ``a red circle moving left and two blue squares rising``
* 2 -- a lead-in plus participles: ``a video of a red circle moving left ...`` /
  ``there are two blue squares rising ...``

:func:`parse_caption` understands every phrase these templates emit; :func:`caption_with_claims`
returns the exact :class:`CaptionClaims` a caption makes so tests can check the round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from pisces_cli.errors import UsageError
from pisces_cli.world.spec import BACKGROUND_COLORS, OBJECT_COLORS, SHAPES, SceneSpec

N_TEMPLATES = 3

COUNT_WORDS: dict[int, tuple[str, ...]] = {1: ("a", "one"), 2: ("two",), 3: ("three",)}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
SPEED_WORDS: dict[str, tuple[str, ...]] = {"slow": ("slowly",), "fast": ("quickly", "fast", "rapidly")}
#: Motion phrases per direction: (singular verb, plural verb, participle).
MOTION_PHRASES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "left": (
        ("moves left", "move left", "moving left"),
        ("drifts to the left", "drift to the left", "drifting to the left"),
        ("slides leftward", "slide leftward", "sliding leftward"),
        ("travels left", "travel left", "traveling left"),
    ),
    "right": (
        ("moves right", "move right", "moving right"),
        ("drifts to the right", "drift to the right", "drifting to the right"),
        ("slides rightward", "slide rightward", "sliding rightward"),
        ("travels right", "travel right", "traveling right"),
    ),
    "up": (
        ("moves up", "move up", "moving up"),
        ("drifts upward", "drift upward", "drifting upward"),
        ("rises", "rise", "rising"),
        ("floats upward", "float upward", "floating upward"),
    ),
    "down": (
        ("moves down", "move down", "moving down"),
        ("drifts downward", "drift downward", "drifting downward"),
        ("sinks", "sink", "sinking"),
        ("falls", "fall", "falling"),
    ),
    "still": (
        ("stays still", "stay still", "staying still"),
        ("sits motionless", "sit motionless", "sitting motionless"),
        ("rests in place", "rest in place", "resting in place"),
        ("remains stationary", "remain stationary", "remaining stationary"),
    ),
}
BACKGROUND_PREPOSITIONS: tuple[str, ...] = ("on", "against", "over")
LEAD_INS: tuple[str, ...] = ("a video of", "a clip showing", "there is")
JOINERS_VERB: tuple[str, ...] = (" and ", ", while ")
JOINERS_PARTICIPLE: tuple[str, ...] = (" and ",)

_PARSE_COUNT = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
_PARSE_SIZE = {w: s for s, words in SIZE_WORDS.items() for w in words}
_PARSE_SPEED = {w: s for s, words in SPEED_WORDS.items() for w in words}
_PARSE_DIRECTION = {
    "left": "left",
    "leftward": "left",
    "right": "right",
    "rightward": "right",
    "up": "up",
    "upward": "up",
    "rises": "up",
    "rise": "up",
    "rising": "up",
    "down": "down",
    "downward": "down",
    "sinks": "down",
    "sink": "down",
    "sinking": "down",
    "falls": "down",
    "fall": "down",
    "falling": "down",
    "still": "still",
    "motionless": "still",
    "stationary": "still",
    "rests": "still",
    "rest": "still",
    "resting": "still",
}
_PARSE_SHAPE = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}}
_BACKGROUND_RE = re.compile(
    r"\s*\b(?:on|against|over)\s+(?:a|an|the)\s+(" + "|".join(BACKGROUND_COLORS) + r")\s+background\b"
)
_LEAD_IN_RE = re.compile(r"^\s*(?:a video of|a clip showing|there is|there are)\s+")
_CLAUSE_SPLIT_RE = re.compile(r"\s*(?:,\s*while\s+|,\s*and\s+|\s+and\s+|\s+while\s+|;\s*|,\s*)")


@dataclass
class ObjectClaim:
    """What a caption says about one object group; None where it says nothing."""

    color: str | None = None
    shape: str | None = None
    count: int | None = None
    size: str | None = None
    direction: str | None = None
    speed: str | None = None


@dataclass
class CaptionClaims:
    """All claims of a caption: one :class:`ObjectClaim` per clause, plus the background."""

    objects: list[ObjectClaim] = field(default_factory=list)
    background: str | None = None


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else int(rng))


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(0, len(options)))]


def caption_with_claims(
    spec: SceneSpec,
    rng: np.random.Generator | int | None = None,
    paraphrase: bool = True,
    template: int | None = None,
) -> tuple[str, CaptionClaims]:
    """Caption ``spec`` and return ``(text, claims)`` -- exactly what the text asserts.

    ``paraphrase=False`` gives the canonical caption (template 0, first phrase of every
    table, size, speed and background always stated). With ``paraphrase=True`` words,
    template (unless given) and the optional size/speed/background mentions are drawn from
    ``rng``. Color, shape, count and direction are always stated. Groups with no instance
    (possible after a ``wrong_count`` corruption) are left out; raises :class:`UsageError` when
    nothing is left.
    """
    groups = [g for g in spec.groups if g.count > 0]
    if not groups:
        raise UsageError("caption: the scene has no objects to describe")
    gen = _rng(rng)
    if template is None:
        template = int(gen.integers(0, N_TEMPLATES)) if paraphrase else 0
    if not 0 <= template < N_TEMPLATES:
        raise ValueError(f"template={template}, expected 0..{N_TEMPLATES - 1}")

    def pick(options: tuple[str, ...]) -> str:
        return _choice(gen, options) if paraphrase else options[0]

    def maybe() -> bool:
        return bool(gen.random() < 0.5) if paraphrase else True

    clauses: list[str] = []
    claims = CaptionClaims()
    for group in groups:
        claim = ObjectClaim(
            color=group.color, shape=group.shape, count=group.count, direction=group.direction
        )
        words: list[str] = []
        adjectives: list[str] = []
        if maybe():
            adjectives.append(pick(SIZE_WORDS[group.size]))
            claim.size = group.size
        adjectives.append(group.color)
        count_word = pick(COUNT_WORDS[group.count])
        if count_word == "a" and adjectives[0][0] in "aeiou":
            count_word = "an"
        words.append(count_word)
        words.extend(adjectives)
        words.append(group.shape + ("s" if group.count > 1 else ""))
        singular, plural, participle = pick(MOTION_PHRASES[group.direction])
        if template == 0:
            words.append(singular if group.count == 1 else plural)
        else:
            words.append(participle)
        if group.direction != "still" and maybe():
            words.append(pick(SPEED_WORDS[group.speed]))
            claim.speed = group.speed
        clauses.append(" ".join(words))
        claims.objects.append(claim)

    joiners = JOINERS_VERB if template == 0 else JOINERS_PARTICIPLE
    text = clauses[0]
    for clause in clauses[1:]:
        text += pick(joiners) + clause
    if template == 2:
        lead_in = pick(LEAD_INS)
        if lead_in == "there is" and groups[0].count > 1:
            lead_in = "there are"
        text = f"{lead_in} {text}"
    if maybe():
        text += f" {pick(BACKGROUND_PREPOSITIONS)} a {spec.background} background"
        claims.background = spec.background
    return text, claims


def caption(
    spec: SceneSpec,
    rng: np.random.Generator | int | None = None,
    paraphrase: bool = True,
    template: int | None = None,
) -> str:
    """Caption text of ``spec``; see :func:`caption_with_claims`."""
    return caption_with_claims(spec, rng, paraphrase, template)[0]


def parse_caption(text: str) -> CaptionClaims:
    """Read the claims of a caption in the template language.

    Returns one :class:`ObjectClaim` per clause that names a color or a shape, in order;
    words outside the vocabulary are ignored. ``grey`` is read as ``gray``.
    """
    lowered = re.sub(r"[^a-z,; ]+", " ", text.lower().replace("grey", "gray"))
    lowered = re.sub(r"\s+", " ", lowered).strip()
    claims = CaptionClaims()
    match = _BACKGROUND_RE.search(lowered)
    if match:
        claims.background = match.group(1)
        lowered = (lowered[: match.start()] + lowered[match.end() :]).strip()
    lowered = _LEAD_IN_RE.sub("", lowered)
    for clause in _CLAUSE_SPLIT_RE.split(lowered):
        tokens = clause.split()
        claim = ObjectClaim()
        if tokens and tokens[0] in _PARSE_COUNT:
            claim.count = _PARSE_COUNT[tokens[0]]
        for token in tokens:
            if token in OBJECT_COLORS and claim.color is None:
                claim.color = token
            elif token in _PARSE_SHAPE and claim.shape is None:
                claim.shape = _PARSE_SHAPE[token]
            elif token in _PARSE_SIZE and claim.size is None:
                claim.size = _PARSE_SIZE[token]
            elif token in _PARSE_SPEED and claim.speed is None:
                claim.speed = _PARSE_SPEED[token]
            elif token in _PARSE_DIRECTION and claim.direction is None:
                claim.direction = _PARSE_DIRECTION[token]
            elif token in ("two", "three") and claim.count is None:
                claim.count = _PARSE_COUNT[token]
        if claim.color is not None or claim.shape is not None:
            claims.objects.append(claim)
    return claims


def world_vocabulary() -> list[str]:
    """Sorted list of every word the caption templates can emit (punctuation excluded)."""
    phrases: list[str] = ["an", "background", "there are", *LEAD_INS, *BACKGROUND_PREPOSITIONS]
    phrases += [w for words in COUNT_WORDS.values() for w in words]
    phrases += [w for words in SIZE_WORDS.values() for w in words]
    phrases += [w for words in SPEED_WORDS.values() for w in words]
    phrases += [p for table in MOTION_PHRASES.values() for triple in table for p in triple]
    phrases += list(OBJECT_COLORS) + list(BACKGROUND_COLORS)
    phrases += list(SHAPES) + [s + "s" for s in SHAPES]
    phrases += [j.replace(",", " ") for j in JOINERS_VERB + JOINERS_PARTICIPLE]
    return sorted({word for phrase in phrases for word in phrase.split()})
