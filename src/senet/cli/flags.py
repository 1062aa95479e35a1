"""What the commands' parsers share: the help formatter, the one-line error, argparse ``type=`` functions, the
flags several commands declare alike, and the flags generated from a config dataclass's own declarations."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import typing

from senet.train.config import boolean_model_options, parse_model_options


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, unless its help already names it or it is a plain on/off switch."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = "default" in text or action.default is argparse.SUPPRESS or action.nargs == 0
        if shown or not (action.option_strings or action.nargs in ("?", "*")):
            return text
        return text + (" (default: none)" if action.default is None else " (default: %(default)s)")


class Parser(argparse.ArgumentParser):
    """An argparse parser whose error is one line after a short usage (``senet train`` has ~50 flags)."""

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        usage = self.format_usage()
        if usage.count("\n") > 2:
            usage = f"usage: {self.prog} [options]  (see {self.prog} --help)\n"
        self.exit(2, f"{usage}{self.prog}: error: {message}\n")


# argparse ``type=`` functions: each names what it expects, and argparse prefixes the flag to the message.
def int_at_least(low: int) -> typing.Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def positive_ints(example: str) -> typing.Callable[[str], list[int]]:
    """A parser of ``"224,320"`` -> ``[224, 320]``; ``example`` shows the format in its error."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(p.strip()) for p in text.split(",")]
        except ValueError:
            values = []
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= 1 such as {example}; got {text!r}"
            )
        return values

    return parse


def comma_separated(
    kind: type, what: str, example: str, skip_empty: bool = True
) -> typing.Callable[[str], tuple]:
    """A parser of ``"82,123"`` -> ``(82.0, 123.0)`` (``kind``: float); with ``skip_empty``, ``""`` is ``()``.
    ``what`` and ``example`` say the format in its error."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(p) for p in (p.strip() for p in text.split(",")) if p or not skip_empty)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what} such as {example}; got {text!r}"
            ) from None

    return parse


floats = comma_separated(float, "numbers", "0.5,0.5,0.5", skip_empty=False)
epoch_list = comma_separated(float, "epochs", "82,123 or 0.5,1.5")  # "" clears the list
ints = comma_separated(int, "integers", "2,3")


def options_flag(booleans: typing.Callable[[], typing.Collection[str]]) -> typing.Callable[[str], str]:
    """An argparse type for ``KEY=VALUE`` build options: checked now (one line), a boolean option (decided by
    its declared type, ``booleans()``) written as people write it becomes ``KEY=True`` / ``KEY=False``
    (:func:`senet.train.config.boolean_value`); every other value is left as given (``se_reduction=1`` is
    1)."""

    def parse(text: str) -> str:
        try:
            ((key, value),) = parse_model_options([text], booleans()).items()
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("--model-opt ")) from None
        return f"{key}={value}" if isinstance(value, bool) else text

    return parse


@functools.cache
def _boolean_detector_options() -> frozenset[str]:
    """torchvision FasterRCNN's keywords whose default is a boolean (none in torchvision 0.29)."""
    from torchvision.models.detection import FasterRCNN

    from senet.detection.model import DETECTOR_OPTIONS

    parameters = inspect.signature(FasterRCNN.__init__).parameters
    return frozenset(key for key in DETECTOR_OPTIONS if isinstance(parameters[key].default, bool))


model_option = options_flag(boolean_model_options)
detector_option = options_flag(_boolean_detector_options)


# ------------------------------------------------------------------------------------ flags from a config


def add_config_flags(
    parser: argparse.ArgumentParser,
    config: type,
    *,
    tuples: typing.Callable[[str], tuple],
    note: str = "",
) -> None:
    """One ``--flag`` per field of the dataclass ``config``, so every field can be set from the command line,
    each made from the field's own declaration: its type, its default and its ``metadata`` (``help``, and
    ``metavar`` / ``choices`` where the type does not say them). A dict field (build options) has no flag of
    its own: its command takes it as repeated ``KEY=VALUE`` flags.

    Their argparse default is None ("not given"); the help shows the dataclass's default, with ``note``.
    ``tuples``: the argparse type of tuple fields (comma-separated values)."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        kind = hints[f.name]
        args = typing.get_args(kind)
        if type(None) in args:
            kind = next(a for a in args if a is not type(None))
        if typing.get_origin(kind) is dict:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", f.name.replace("_", " "))
        if "default" not in help_text:
            help_text += f" (default: {_describe_default(f)}{note})"
        help_text = help_text.replace("%", "%%")
        metavar = f.metadata.get("metavar")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=tuples, default=None, metavar=metavar, help=help_text)
        elif "choices" in f.metadata:
            parser.add_argument(flag, choices=f.metadata["choices"], default=None, help=help_text)
        else:
            metavar = "N" if kind is int else "X" if kind is float else metavar
            parser.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)


def _describe_default(field: dataclasses.Field) -> str:
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None:
        return "none"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    if isinstance(default, float):
        return f"{default:.4g}"
    return str(default)


def flag_values(args: argparse.Namespace, *names: str) -> dict[str, typing.Any]:
    """The values of the flags ``names`` (dests), as keywords of the function a command calls."""
    return {name: getattr(args, name) for name in names}


def config_overrides(args: argparse.Namespace, config: type) -> dict[str, typing.Any]:
    """The fields of the dataclass ``config`` given as flags (those left out are None)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config)
        if getattr(args, f.name, None) is not None
    }


# ------------------------------------------------------------------------ flags several commands declare


def add_command_group(
    commands: typing.Any, name: str, metavar: str, summary: str, usage: str = "COMMAND"
) -> typing.Any:
    """The command ``name`` of sub-commands (``senet data pack``; ``metavar``: ``pack|verify|shapes``),
    said in ``senet --help`` by ``summary``: the ``add_parser`` of its sub-commands. ``senet NAME --help``
    points to ``senet NAME <usage> --help``."""
    group = commands.add_parser(name, help=summary)
    sub_help = f"`senet {name} {usage} --help` describes its flags"
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar=metavar, help=sub_help)


RUN_OR_WEIGHTS = "a run directory of `senet train`, one of its checkpoint-*.json, or a senet weights file"


def add_weights_flag(parser: argparse.ArgumentParser, of_a_run: bool = True) -> None:
    """``--weights last|best``: which weights of a run directory."""
    parser.add_argument(
        "--weights",
        choices=("last", "best"),
        default="last",
        help=f"{'of a run directory: ' if of_a_run else ''}the last checkpoint or the best epoch's weights",
    )


def add_loading_flags(
    parser: argparse.ArgumentParser, batch_size: int, batch_help: str = "images per batch"
) -> None:
    """``--batch-size``, ``--workers`` and ``--device``: how a command reading a data set runs the network."""
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, metavar="N", help=batch_help)
    parser.add_argument(
        "--workers", type=nonnegative_int, default=0, metavar="N", help="DataLoader worker processes"
    )
    add_device_flag(parser)


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_inputs_argument(parser: argparse.ArgumentParser) -> None:
    """The image files and folders a prediction reads."""
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, and folders searched recursively"
    )


def add_format_flag(parser: argparse.ArgumentParser, *formats: str) -> None:
    """``--format``: the first of ``formats`` by default."""
    parser.add_argument("--format", choices=formats, default=formats[0], help="output format")
