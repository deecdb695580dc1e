"""The caption grammar of the moving-digits dataset, shared by its renderer and by the caption
classifier that scores generated videos.

A clip caption names every digit and its motion: ``"a handwritten 7 moving up and to the left"``,
``"a handwritten 3 moving right and a handwritten 5 moving down"`` (top digit first), or
``"a handwritten 4 bouncing around"``; an image caption names only the digit: ``"a handwritten 7"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The eight straight-line directions, in the order used for labels.
DIRECTIONS = (
    "up",
    "down",
    "left",
    "right",
    "up and to the left",
    "up and to the right",
    "down and to the left",
    "down and to the right",
)
BOUNCING = "bouncing"
MOTIONS = DIRECTIONS + (BOUNCING,)

# Unit steps (dx, dy) in image coordinates (x to the right, y downwards) of each direction.
DIRECTION_STEPS = {
    "up": (0, -1),
    "down": (0, 1),
    "left": (-1, 0),
    "right": (1, 0),
    "up and to the left": (-1, -1),
    "up and to the right": (1, -1),
    "down and to the left": (-1, 1),
    "down and to the right": (1, 1),
}

_SUBJECT = "a handwritten "
_DIRECTION_PATTERN = "|".join(re.escape(d) for d in sorted(DIRECTIONS, key=len, reverse=True))
_PHRASE = re.compile(
    rf"a handwritten ([0-9])(?: moving ({_DIRECTION_PATTERN})| (bouncing around))?"
)


def digit_phrase(digit: int, motion: str | None = None) -> str:
    """``"a handwritten 7"``, ``"... moving up"`` or ``"... bouncing around"``."""
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    if motion is None:
        return f"{_SUBJECT}{digit}"
    if motion == BOUNCING:
        return f"{_SUBJECT}{digit} bouncing around"
    if motion not in DIRECTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {list(MOTIONS)}")
    return f"{_SUBJECT}{digit} moving {motion}"


def digits_caption(pairs: Sequence[tuple[int, str | None]]) -> str:
    """Caption of a clip or image with ``(digit, motion)`` pairs, top digit first."""
    if not pairs:
        raise ValueError("a caption needs at least one (digit, motion) pair")
    return " and ".join(digit_phrase(d, m) for d, m in pairs)


def parse_caption_pairs(text: str) -> list[tuple[int, str | None]]:
    """All ``(digit, motion)`` pairs of a caption; motion is None for an image caption."""
    pairs = []
    position = 0
    while True:
        match = _PHRASE.match(text, position)
        if match is None:
            raise ValueError(f"not a moving-digits caption: {text!r}")
        digit, direction, bouncing = match.groups()
        pairs.append((int(digit), direction or (BOUNCING if bouncing else None)))
        position = match.end()
        if position == len(text):
            return pairs
        if not text.startswith(" and ", position):
            raise ValueError(f"not a moving-digits caption: {text!r}")
        position += len(" and ")


def parse_caption(text: str) -> tuple[int, str | None]:
    """``(digit, motion)`` of a one-digit caption, e.g. ``(7, "up and to the left")``."""
    pairs = parse_caption_pairs(text)
    if len(pairs) != 1:
        raise ValueError(f"expected a one-digit caption, got {len(pairs)} digits in {text!r}")
    return pairs[0]


def caption_vocabulary(*, two_digits: bool, bouncing: bool, images: bool = True) -> list[str]:
    """Every caption the moving-digits renderer can write with these settings.

    One-digit clips name one of the straight motions (or bouncing); two-digit clips name two
    such phrases, top digit first; images name only their digit.
    """
    motions = MOTIONS if bouncing else DIRECTIONS
    phrases = [(digit, motion) for digit in range(10) for motion in motions]
    captions = [digits_caption([pair]) for pair in phrases]
    if two_digits:
        captions += [digits_caption([a, b]) for a in phrases for b in phrases]
    if images:
        captions += [digit_phrase(digit) for digit in range(10)]
    return captions
