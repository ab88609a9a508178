"""What every experiments CLI shares: value parsers and the one-line error.

A user error (an unknown name, a size out of range, a malformed list, a missing directory) ends
a CLI with one line ``PROG: error: MESSAGE`` on stderr and exit status 2, as argparse's
``parser.error`` does. A check that happens after parsing raises :class:`UsageError`; the CLI
catches that type only, so a bug elsewhere still shows its traceback. Building the model is
the one wider net (a ValueError from a layer's constructor is a bad flag far more often than a
bug): ``LRNN_TRACEBACK=1`` prints the traceback of what a one-line error reports.

The parsers are argparse ``type=`` callables: they raise ``argparse.ArgumentTypeError``, which
argparse reports as ``argument --flag: MESSAGE``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
import traceback
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

__all__ = ["UsageError", "fail", "one_line", "positive_int", "nonnegative_int",
           "nonnegative_float", "int_list", "name_list", "set_overrides", "tyro_cli"]


class UsageError(ValueError):
    """A request that cannot be carried out as asked (a config, a flag, a run directory);
    raised before anything is written. CLIs report it as one ``error:`` line (exit 2)."""


def one_line(msg) -> str:
    """``msg`` on one line (its lines joined by spaces)."""
    return " ".join(s.strip() for s in str(msg).splitlines() if s.strip())


def fail(prog: str, msg) -> NoReturn:
    """Ends the program as ``parser.error`` does: ``PROG: error: MSG`` on stderr, exit 2
    (with ``LRNN_TRACEBACK=1`` set, the traceback of the exception being handled first)."""
    if os.environ.get("LRNN_TRACEBACK") and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"{prog}: error: {one_line(msg)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _int(s: str) -> int:
    try:
        return int(str(s).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def positive_int(s: str) -> int:
    v = _int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def nonnegative_int(s: str) -> int:
    v = _int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def nonnegative_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}")
    return v


def int_list(minimum: int = 1) -> Callable[[str], list[int]]:
    """A parser of ``"8,16,32"``: integers >= ``minimum``, no empty items."""

    def parse(s: str) -> list[int]:
        parts = [p.strip() for p in str(s).split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")
        out = [_int(p) for p in parts]
        bad = [v for v in out if v < minimum]
        if bad:
            what = "positive integers" if minimum == 1 else f"integers >= {minimum}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {bad[0]} in {s!r}")
        return out

    return parse


def name_list(valid: Iterable[str]) -> Callable[[str], list[str]]:
    """A parser of ``"a,b"``: each a name in ``valid``, no empty items."""
    valid = tuple(valid)

    def parse(s: str) -> list[str]:
        parts = [p.strip() for p in str(s).split(",")]
        bad = [p for p in parts if p not in valid]
        if bad or not parts:
            shown = ", ".join(repr(b) for b in bad) or repr(s)
            raise argparse.ArgumentTypeError(f"{shown}: expected comma-separated names from "
                                             f"{', '.join(valid)}")
        return parts

    return parse


def _field_type(cls, name: str):
    hints = typing.get_type_hints(cls)
    return hints.get(name)


def set_overrides(items: Sequence[str], cls, flag: str = "--set") -> dict:
    """``["d_model=32", "bf16=true"]`` -> ``{"d_model": 32, "bf16": True}`` for the fields of
    the dataclass ``cls``, each converted to its field's type; UsageError naming the item
    otherwise."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for kv in items:
        k, sep, v = kv.partition("=")
        if not sep or k not in fields:
            raise UsageError(f"{flag} {kv!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(fields))}")
        t = _field_type(cls, k)
        try:
            if t is bool:
                if v.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                out[k] = v.lower() in ("1", "true", "yes")
            elif t in (int, float, str):
                out[k] = t(v)
            elif typing.get_origin(t) is tuple:
                (inner, *_) = typing.get_args(t) or (str,)
                out[k] = tuple(inner(x) for x in v.split(",") if x.strip())
            else:  # Literal[...] and the like: the string, checked by the config's own checks
                choices = typing.get_args(t)
                if choices and v not in choices:
                    raise ValueError
                out[k] = v
        except ValueError:
            want = getattr(t, "__name__", None) or " | ".join(map(repr, typing.get_args(t)))
            raise UsageError(f"{flag} {kv!r}: {k} expects {want}") from None
    return out


_BOX = re.compile(r"^[\s│╭╮╰╯─]*$")


def _tyro_message(text: str) -> str:
    """The message of a tyro error box (its first paragraph) on one line."""
    lines = []
    for raw in text.splitlines():
        s = raw.strip()
        if s.startswith(("╭", "╰")):  # the frame (its title repeats the message's kind)
            continue
        s = s.strip("│ ")
        if _BOX.match(s):
            if lines:
                break  # the rule after the message: help text follows
            continue
        lines.append(s)
    return one_line(" ".join(lines)) or one_line(text)


def tyro_cli(cls, *, args: Sequence[str], default=None, description: str | None = None,
             prog: str | None = None):
    """``tyro.cli(cls, ...)``, its parse errors raised as one-line UsageErrors (tyro prints a
    box over several lines); ``--help`` prints and exits as usual."""
    import tyro

    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return tyro.cli(cls, default=default, args=list(args), description=description,
                            prog=prog)
    except SystemExit as e:
        if e.code in (0, None):
            sys.stderr.write(buf.getvalue())
            raise
        raise UsageError(_tyro_message(buf.getvalue()) or "invalid arguments") from None
