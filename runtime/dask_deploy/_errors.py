"""Errors that reach the user as one clear line and exit status 2."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input from the user: the CLI prints the message and exits 2, without a traceback."""

    exit_code = 2


class SettingsError(UserInputError):
    """A setting has a value that is not allowed.

    >>> str(SettingsError("policy.maximum", -1, "an integer >= 0"))
    "policy.maximum: got -1, expected an integer >= 0"
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}: got {value!r}, expected {allowed}")
