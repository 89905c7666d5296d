"""Command-line options from the environment: FLOWERDEMO_<OPTION> for each long option.

`--url` is FLOWERDEMO_URL, `--budget-ms` FLOWERDEMO_BUDGET_MS, `--kiosk` FLOWERDEMO_KIOSK=1, so a
container is configured with `docker run -e ...` alone. An option given on the command line wins
over the environment; an empty variable counts as unset. A value that does not fit its option is
refused with the variable's name, as a bad option would be.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

PREFIX = "FLOWERDEMO_"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_NOT_SETTABLE = (argparse._HelpAction, argparse._VersionAction)


def variable_name(option: str) -> str:
    """FLOWERDEMO_BUDGET_MS for --budget-ms."""
    return PREFIX + option.lstrip("-").replace("-", "_").upper()


def _long_option(action: argparse.Action) -> str | None:
    for option in action.option_strings:
        if option.startswith("--"):
            return option
    return None


def settable_actions(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    """(variable name, option) for every long option the environment may set."""
    found = []
    for action in parser._actions:
        option = _long_option(action)
        if option is None or isinstance(action, _NOT_SETTABLE):
            continue
        found.append((variable_name(option), action))
    return found


def environment_defaults(
    parser: argparse.ArgumentParser, environ: Mapping[str, str]
) -> tuple[dict[str, object], list[str]]:
    """The defaults the environment gives `parser`'s options, and one sentence per bad value."""
    defaults: dict[str, object] = {}
    problems: list[str] = []
    for name, action in settable_actions(parser):
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        option = _long_option(action)
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            word = raw.lower()
            if word not in TRUE_WORDS | FALSE_WORDS:
                problems.append(f"{name}='{raw}': {option} takes 1/true/yes/on or 0/false/no/off")
                continue
            given = word in TRUE_WORDS
            defaults[action.dest] = (
                given if isinstance(action, argparse._StoreTrueAction) else not given
            )
            continue
        convert = action.type if callable(action.type) else str
        try:
            value = convert(raw)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            kind = getattr(convert, "__name__", "value")
            kind = {"int": "a whole number", "float": "a number"}.get(kind, f"a {kind}")
            problems.append(f"{name}='{raw}': {option} takes {kind}")
            continue
        if action.choices is not None and value not in action.choices:
            allowed = ", ".join(str(choice) for choice in action.choices)
            problems.append(f"{name}='{raw}': {option} is one of {allowed}")
            continue
        defaults[action.dest] = value
    return defaults, problems


def apply_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Make the environment's values `parser`'s defaults (so the command line still wins);
    a bad value ends the program through `parser.error`, naming the variable."""
    defaults, problems = environment_defaults(parser, environ)
    if problems:
        parser.error("; ".join(problems))
    parser.set_defaults(**defaults)


def describe(parser: argparse.ArgumentParser) -> str:
    """A sentence for --help: which variables set which options."""
    names = [name for name, _action in settable_actions(parser)]
    shown = ", ".join(names[:4])
    return (
        f"Every option can also come from the environment: {shown}, ... (FLOWERDEMO_ and the "
        "option's name in capitals, '-' as '_'; flags as 1 or 0). The command line wins."
    )
