"""Settings that follow the length of the run.

A schedule setting (warm-up, queue start, prototype freezing) is either an absolute number
(epochs or iterations) or a percentage of the run written as a string, ``"7.5%"``. A preset that
gives percentages keeps its intent when ``train.epochs`` shortens it: its queue starts after the
same share of the run, not at an epoch the short run never reaches.
"""

from __future__ import annotations

import re

from swav.errors import ConfigError

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


def percentage(value: int | float | str) -> float | None:
    """The percentage a value gives (``"7.5%"`` -> 7.5), or None for an absolute number."""
    if not isinstance(value, str):
        return None
    m = _PERCENT.match(value)
    if m is None:
        raise ConfigError(f"{value!r} is neither a number nor a percentage of the run like '5%'")
    return float(m.group(1))


def resolve(value: int | float | str, total: float) -> float:
    """The absolute amount: ``value`` itself, or its percentage of ``total``."""
    p = percentage(value)
    return float(value) if p is None else p / 100.0 * total


def absolute(value: int | float | str, key: str) -> float:
    """A setting that must already be absolute (resolved with the run's length)."""
    if isinstance(value, str):
        raise ConfigError(
            f"{key}={value!r} is a percentage of the run: resolve the configuration with "
            "swav.config.resolve_run_length(cfg, iterations_per_epoch) first"
        )
    return float(value)


_NUMBER = r"(\d+(?:\.\d*)?)"
_DURATION = re.compile(rf"^\s*(?:{_NUMBER}\s*h)?\s*(?:{_NUMBER}\s*m)?\s*(?:{_NUMBER}\s*s?)?\s*$")


def duration(value: int | float | str) -> float:
    """Seconds from ``"30m"``, ``"2h"``, ``"1h30m"``, ``"90s"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a duration: write it like '30m', '2h' or '90s'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value)
        if m is None or not any(m.groups()):
            raise ConfigError(f"{value!r} is not a duration: write it like '30m', '2h' or '90s'")
        h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mins * 60 + secs
    if not (seconds >= 0 and seconds < float("inf")):
        raise ConfigError(f"{value!r} is not a duration of zero or more seconds")
    return seconds
