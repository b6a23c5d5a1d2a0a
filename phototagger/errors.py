"""The one error type for a user's mistake: what is wrong and the command or setting that fixes it.

It is a MetaflowException, so a step that raises it ends with Metaflow's two-line report
(headline, then the message) instead of "Internal error" and a traceback; the command-line
tools print it as one line. PHOTOTAGGER_DEBUG=1 appends where it was raised.
"""
from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Optional

from metaflow._vendor import click
from metaflow.exception import MetaflowException

DEBUG_ENV = "PHOTOTAGGER_DEBUG"


class UserError(MetaflowException):
    """A mistake the user can fix: a wrong option, a missing file or key, a step run out of order."""

    headline = "Photo Tagger"

    def __init__(self, message: str, fix: Optional[str] = None):
        self.problem = message
        self.fix = fix
        text = f"{message}\n    Fix: {fix}" if fix else message
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            text += "\n" + "".join(traceback.format_stack()[:-1])
        super().__init__(text)

    def one_line(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem


def checked(convert: Callable[[Any], Any], local_only: bool = False) -> Callable[[Any, Any, Any], Any]:
    """A click callback for a flow Parameter (`Parameter(..., callback=checked(fn))`): `fn(value)` runs at parse
    time and returns the value to keep, so a bad value fails before the run starts with click's one-line
    "Invalid value for '--NAME': ...". (A callback, not a click type: Metaflow's Runner knows only its own types.)

    `local_only`: check only for `run` and `resume`, not when deploying or triggering a deployment, whose steps
    see other keys and files than this machine (and check again in `start`)."""

    def callback(ctx: Any, param: Any, value: Any) -> Any:
        if local_only and ctx is not None and ctx.info_name not in ("run", "resume"):
            return value
        try:
            return convert(value)
        except (UserError, ValueError) as exc:
            raise click.BadParameter(exc.one_line() if isinstance(exc, UserError) else str(exc), ctx=ctx, param=param) from None

    return callback


def lease_seconds(value: Any) -> int:
    """A --claim-lease-seconds value: a whole number of seconds, at least 1."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{value!r} is not a whole number of seconds") from None
    if number < 1:
        raise UserError(f"a lease of {number} s gives every run's photos away at once", "pass a number of seconds, e.g. 300 (the default)")
    return number


def count(value: Any) -> int:
    """A --batch-size style number: 0 (the default) or more."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise UserError(f"{number} is negative", "pass 0 (the default) or a positive number")
    return number
