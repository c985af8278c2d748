"""Checks of the generation arguments, torch-free: the pipeline runs them, and the app before queueing."""

from __future__ import annotations

import math

from app.errors import TryOnInputError, quoted

MAX_SIDE = 2048
MAX_STEPS = 100
MAX_GUIDANCE = 20.0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_generation_args(steps, guidance, seed, width, height) -> None:
    """Raise TryOnInputError quoting the first unusable value and what to use instead."""
    for name, value in (("width", width), ("height", height)):
        if not _is_int(value) or not 64 <= value <= MAX_SIDE or value % 8:
            raise TryOnInputError(f"{name}={quoted(value)} is not usable: use a multiple of 8 from 64 to "
                                  f"{MAX_SIDE}.")
    if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
        raise TryOnInputError(f"steps={quoted(steps)} is not usable: use a whole number from 1 to {MAX_STEPS}.")
    if (isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance)
            or not 0 <= guidance <= MAX_GUIDANCE):
        raise TryOnInputError(f"guidance={quoted(guidance)} is not usable: use a number from 0 to {MAX_GUIDANCE:g} "
                              "(2.5 is typical; 1 or less turns guidance off).")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise TryOnInputError(f"seed={quoted(seed)} is not usable: use a whole number from 0 to 2**63-1, or -1 "
                              "for a random one.")
