"""The base class of every error caused by what the user gave (a setting, a file, a path).

Each such error carries a one-line message that says what happened and what to change. The
command line catches ``SwAVError`` once and prints ``swav <command>: error: <message>``; any
other exception is a defect and keeps its traceback.
"""

from __future__ import annotations


class SwAVError(Exception):
    """An error in the user's input: a bad setting, a missing or damaged file, unusable data."""


class UsageError(SwAVError, ValueError):
    """An argument of a library call that cannot be used (an unknown name, a value out of
    range); the message names the argument and the allowed values."""


class ConfigError(SwAVError, ValueError):
    """A configuration value or key that cannot be used; the message says what to change."""
