"""The argument checks every command line shares (train/, benchmarks/, ``python -m
gn_mxnet.convert``): argparse ``type=`` converters that refuse bad numbers naming the rule,
choices read from the module that owns them, and library validation errors turned into usage
errors. A refused argument always ends with the usage line and exit code 2, never a traceback.

Standard library only, and the choices are read lazily, so a bad number is refused before MXNet
is imported (instantly, and where MXNet cannot be imported at all, as for train/launch.py).
"""
import argparse
import contextlib
import importlib
import math
import os


def _parse(kind, text):
    try:
        value = kind(text)
    except ValueError:
        noun = 'an integer' if kind is int else 'a number'
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _checked(kind, rule, accept):
    """A converter for `type=`: parses `kind` and refuses values where accept(value) is false."""
    def convert(text):
        value = _parse(kind, text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value
    convert.__name__ = rule   # argparse names the converter in some of its own messages
    return convert


def int_range(low, high=None):
    rule = f'an integer >= {low}' if high is None else f'an integer from {low} to {high}'
    return _checked(int, rule, lambda v: v >= low and (high is None or v <= high))


positive_int = _checked(int, 'a positive integer', lambda v: v >= 1)
non_negative_int = _checked(int, 'an integer >= 0', lambda v: v >= 0)
positive_float = _checked(float, 'a number > 0', lambda v: v > 0)
non_negative_float = _checked(float, 'a number >= 0', lambda v: v >= 0)
# Momentum, label smoothing: 1 would never forget (or never learn from) the data.
fraction = _checked(float, 'a number in [0, 1)', lambda v: 0 <= v < 1)


def int_list(item=positive_int, choices=None):
    """A converter for comma-separated integers ('1,2,3'), each checked by `item` (and, if given,
    in `choices`); at least one is required."""
    def convert(text):
        values = tuple(item(part.strip()) for part in text.split(',') if part.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one value, got {text!r}")
        wrong = [v for v in values if choices is not None and v not in choices]
        if wrong:
            raise argparse.ArgumentTypeError(
                f"{', '.join(map(str, wrong))} not among {', '.join(map(str, choices))}")
        return values
    convert.__name__ = 'comma-separated list'
    return convert


class Choices:
    """The allowed values of an option, read from the module that owns them (one home for each
    list, docs/design.md §9) when argparse first needs them: ``choices=Choices(
    'gn_mxnet.training.config', 'TRAIN_NORMS')``. Modules that import MXNet are then imported
    only when such an option is given or help is shown."""

    def __init__(self, module, name):
        self.module, self.name = module, name
        self._values = None

    def values(self):
        if self._values is None:
            self._values = tuple(getattr(importlib.import_module(self.module), self.name))
        return self._values

    def __contains__(self, value):
        return value in self.values()

    def __iter__(self):
        return iter(self.values())

    def __len__(self):
        return len(self.values())


def add_choice(parser, flag, module, name, help='', **kwargs):
    """Adds option `flag` whose values are `module`.`name` (see Choices). The usage line shows a
    metavar instead of the values, so that the usage printed with any error, e.g. a bad number,
    does not import `module`; --help still lists them."""
    metavar = flag.lstrip('-').upper().replace('-', '_')
    return parser.add_argument(flag, choices=Choices(module, name), metavar=metavar,
                               help=f"{help + '; ' if help else ''}one of %(choices)s", **kwargs)


@contextlib.contextmanager
def usage_errors(parser, *errors):
    """Inside the block, a library's validation error (ValueError unless other types are named)
    becomes ``parser.error``: the usage line, the message and exit code 2."""
    try:
        yield
    except errors or (ValueError,) as error:
        parser.error(str(error))


def existing_file(text):
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def existing_dir(text):
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    return text
