"""User-facing errors. The CLI turns every ``XmemError`` into a message and exit code 2."""

from __future__ import annotations


class XmemError(Exception):
    """Base class of errors caused by the user's input or environment (not by a bug).

    ``str(error)`` is the whole message shown to the user: what was wrong, where, what is
    valid, and what to do next.
    """


class ConfigError(XmemError):
    """One or more problems in a trial config or sweep spec, all reported together.

    Attributes:
        problems: one line per problem, each naming the key and the valid choices.
        source: where the config came from (a file path, ``--set``, ...).
    """

    def __init__(self, problems: list[str], source: str = "trial config", hint: str = ""):
        self.problems = list(problems)
        self.source = source
        self.hint = hint
        lines = [f"{source}: {len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))

    def __reduce__(self):
        # Pickled with its own arguments: an error raised in a Ray worker is rebuilt on the
        # driver, and the default (the message as the only argument) would read it as problems.
        return type(self), (self.problems, self.source, self.hint)


def first_line(text: str) -> str:
    """The first line of ``text`` that is not blank, stripped ("" when there is none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def error_summary(error: BaseException) -> str:
    """One line saying what went wrong, for tables and tags: a config error's first problem
    (its source and key), a user error's first line, else ``Type: first line``."""
    if isinstance(error, ConfigError) and error.problems:
        return f"{error.source}: {error.problems[0]}"
    text = first_line(str(error))
    return text if isinstance(error, XmemError) else f"{type(error).__name__}: {text}".rstrip(": ")


class DatasetUnavailable(XmemError):
    """A dataset's files are missing or unreadable (e.g. offline without a download)."""
