"""`submit`'s options, made from the spec's own fields: one place holds each flag's default, help and choices."""
from __future__ import annotations

import typing
from dataclasses import MISSING, fields

import click

from novarch_batch.workers.spec import OutputConfig, RunConfig, SamplingConfig, flag_name

SPEC_CONFIGS = (SamplingConfig, OutputConfig, RunConfig)


def _click_type(f, hints: dict):
    choices = f.metadata.get("choices")
    if choices:
        return click.Choice(choices)
    kind = hints[f.name]
    kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # `str | None` -> str
    return {int: int, float: float, str: str}[kind]


def _shown(default) -> str:
    """A default as a user would type it: 1 and 600, not 1.0 and 600.0."""
    return str(int(default)) if isinstance(default, float) and default.is_integer() else str(default)


def spec_options(command):
    """Add one click option per spec field, in field order. Every option defaults to None, so
    build_spec sees only what the user typed and the dataclass supplies the rest; --help shows
    the dataclass's default."""
    decorators = []
    for config in SPEC_CONFIGS:
        hints = typing.get_type_hints(config)
        for f in fields(config):
            assert f.default is not MISSING, f"{config.__name__}.{f.name} needs a default to be an option"
            meta = f.metadata
            if hints[f.name] is bool:
                decorators.append(click.option(flag_name(f), f.name, is_flag=True, default=None, help=meta["help"]))
                continue
            show = meta.get("show") or (None if f.default is None else _shown(f.default))
            decorators.append(click.option(
                flag_name(f), f.name, type=_click_type(f, hints), default=None, metavar=meta.get("metavar"),
                help=meta["help"] + (f"  [default: {show}]" if show else ""),
            ))
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def sampling_option(name: str, **overrides):
    """One SamplingConfig field as a click option with its dataclass default, for the scripts that
    sample as `submit` does (quality and benchmark scripts); `overrides` replace click settings."""
    f = next(f for f in fields(SamplingConfig) if f.name == name)
    settings = dict(type=_click_type(f, typing.get_type_hints(SamplingConfig)), default=f.default, show_default=True,
                    metavar=f.metadata.get("metavar"), help=f.metadata["help"])
    return click.option(flag_name(f), name, **{**settings, **overrides})


def spec_fields(values: dict) -> dict:
    """The spec's option values out of a command's keyword arguments (the rest stay with the command)."""
    names = {f.name for config in SPEC_CONFIGS for f in fields(config)}
    return {k: values.pop(k) for k in list(values) if k in names}
