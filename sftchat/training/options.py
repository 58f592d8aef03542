"""The training options, derived from `TrainingSettings`: one source for names, defaults and
help, shared by `sftchat train`, the app's `/train` and `sftchat.toml`'s `[training]`.

`add_train_options(parser)` adds a `--kebab-case` option per settings field (booleans as
`--flag` / `--no-flag` against their default), plus `--name`, `--from` and `--resume`; every
settings option defaults to None, meaning "not given: use sftchat.toml, else the default".
`training_overrides(args)` reads back the fields that were given. `check_resume_options(args)`
refuses options beside `--resume` (a resumed run keeps its own name and settings).
`parse_train_options(text)` checks what was typed after `/train` with the same definitions.
Imports nothing heavy, and nothing from the command line or the interface.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import MISSING, fields

from sftchat.config import AUTO, TrainingSettings
from sftchat.errors import SftchatError


class TrainOptionsError(SftchatError, ValueError):
    """`/train` options the app cannot pass on (the message says which and what is accepted)."""


def _count_or_auto(text: str) -> int | str:
    if text == AUTO:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number or 'auto', not {text!r}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="adapter name (default: sft-DATE-TIME)")
    for spec in fields(TrainingSettings):
        help_text, choices = spec.metadata["help"], spec.metadata["choices"]
        default = spec.default if spec.default is not MISSING else None
        annotation = str(spec.type)
        if annotation == "bool":
            flag = _flag(spec.name) if not default else "--no-" + spec.name.replace("_", "-")
            # A flag that turns a default off says so (its field's help describes it on).
            parser.add_argument(flag, dest=spec.name, action="store_false" if default
                                else "store_true", default=None,
                                help=f"do not {help_text}" if default else help_text)
            continue
        kwargs: dict = {"dest": spec.name, "default": None}
        if choices:
            kwargs["choices"] = choices
        elif spec.name in ("epochs", "nproc", "checkpoint_every"):
            kwargs.update(type=_count_or_auto, metavar="N|auto")
        else:
            kind = float if "float" in annotation else int if "int" in annotation else str
            kwargs.update(type=kind, metavar=spec.name.upper())
        shown = f" (default: {default})" if default is not None else ""
        parser.add_argument(_flag(spec.name), help=help_text + shown, **kwargs)
    parser.add_argument("--from", dest="from_adapter", metavar="ADAPTER",
                        help="continue training from this adapter")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue the workspace's interrupted run (killed, crashed or "
                             "cancelled) from its last checkpoint, with its own name, "
                             "settings and dataset snapshot; takes no other training option")


def training_overrides(args: argparse.Namespace) -> dict:
    """The `TrainingSettings` fields given on the command line (not None)."""
    return {spec.name: getattr(args, spec.name) for spec in fields(TrainingSettings)
            if getattr(args, spec.name, None) is not None}


def _given_flag(name: str) -> str:
    spec = next(spec for spec in fields(TrainingSettings) if spec.name == name)
    return ("--no-" + name.replace("_", "-")) if spec.default is True else _flag(name)


def check_resume_options(args: argparse.Namespace, *others: str) -> None:
    """With `--resume`, refuse any option that would change the run (`others`: flags the
    caller found given beside it): it finishes the run it started, or nothing."""
    if not getattr(args, "resume", False):
        return
    given = [_given_flag(name) for name in training_overrides(args)] + list(others)
    given += [flag for flag, dest in (("--name", "name"), ("--from", "from_adapter"))
              if getattr(args, dest, None)]
    if given:
        raise TrainOptionsError(
            f"--resume continues the interrupted run with its own name and settings, so it "
            f"takes no {', '.join(given)}; drop {'it' if len(given) == 1 else 'them'}, or "
            "start a new run without --resume")


class _InAppParser(argparse.ArgumentParser):
    """For text typed in the app: a usage error is an exception to show, not an exit."""

    def error(self, message: str):
        usage = " ".join(self.format_usage().split()[1:])  # one line, without "usage:"
        raise TrainOptionsError(f"{message}; accepted: {usage}")

    def exit(self, status: int = 0, message: str | None = None):
        raise TrainOptionsError(message or "/train takes options only, e.g. /train --epochs 3")


def parse_train_options(text: str) -> list[str]:
    """Check the options typed after `/train` and return them as `sftchat train` arguments.

    The same definitions as the command line, so both accept exactly the same options;
    values are range-checked by the trainer, which reports a bad one as its failure.
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        raise TrainOptionsError(f"cannot read the options: {exc}") from None
    parser = _InAppParser(prog="/train", add_help=False)
    add_train_options(parser)
    check_resume_options(parser.parse_args(words))
    return words
