"""What every command line shares (train/, benchmarks/, ``python -m gn_mxnet.convert``): how a
user's mistake ends, and the argument checks.

Every mistake ends in one line, ``error: <what is wrong and what to do>`` on stderr, never a
traceback: :func:`run` wraps each script's ``main`` (exit 1 for a refusal at run time, 130 for
Ctrl-C), and :class:`ArgumentParser` gives argparse's usage errors the same form (exit 2).
``GN_MXNET_DEBUG=1`` lets the exception through with its traceback instead.

The checks: argparse ``type=`` converters that refuse bad numbers naming the rule, choices read
from the module that owns them, and library validation errors turned into usage errors.

The help: ``--help`` shows every option's default (:class:`HelpFormatter`), and an option whose
default comes from a data set's preset lists each preset's value, read from the preset table
itself (:func:`add_preset`). Every script names things alike: ``--out-dir`` for the folder it
writes, ``--gn-backend``, ``--epochs``, ``--lr-decay-epochs``, and ``-j`` only for
data-loading workers (tests/test_script_options.py).

Standard library only, and the choices are read lazily, so a bad number is refused before MXNet
is imported (instantly).
"""
import argparse
import contextlib
import copy
import importlib
import math
import os
import re
import sys

DEBUG_VARIABLE = 'GN_MXNET_DEBUG'
# A folded message longer than this is cut: one line must stay readable in a terminal.
MAX_MESSAGE = 600
# The exception types a library raises for a user's mistake (a file, a value, a setting);
# anything else is a bug, and its one line says so and how to see the traceback.
EXPECTED = (ValueError, OSError, RuntimeError)


def debugging():
    return os.environ.get(DEBUG_VARIABLE, '') not in ('', '0')


def one_line(error):
    """The message of exception `error` as one line (see message_of), cut at MAX_MESSAGE; for an
    exception type that no library raises for a user's mistake, saying that it is a bug."""
    text = message_of(error)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE - 3].rstrip() + '...'
    if not isinstance(error, EXPECTED):
        text = (f"{type(error).__name__}: {text} (a bug: please report it; {DEBUG_VARIABLE}=1 "
                f"shows the traceback)")
    return text


def message_of(error):
    """The message of exception `error` with its lines folded into one, and of an MXNetError
    only the check that failed (not the C++ stack trace, its source lines nor its time)."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])   # str(KeyError) quotes its message
    else:
        text = str(error)
    text = text.split('Stack trace:')[0]
    if text.startswith('Traceback') and 'MXNetError: ' in text:   # C++ source lines first
        text = text[text.rindex('MXNetError: ') + len('MXNetError: '):]
    text = re.sub(r'\[\d\d:\d\d:\d\d\] \S+:\d+: ', '', text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[:1] == ['Traceback (most recent call last):']:   # MXNet's C++ source lines
        lines = [line for line in lines[1:] if not line.startswith('File "')]
    return ' '.join(lines) or type(error).__name__


def fail(message, code):
    """Print `error: <message>` (folded to one line) on stderr; return exit status `code`."""
    text = (one_line(message) if isinstance(message, BaseException)
            else ' '.join(str(message).split()))
    print(f"error: {text}", file=sys.stderr, flush=True)
    return code


def run(main, argv=None, interrupted='interrupted'):
    """Call ``main(argv)`` as a script's entry point and return its exit status: 0, or main's own
    int; 1 and one ``error:`` line for an exception; 130 and `interrupted` for Ctrl-C (say there
    whether and how the run resumes); argparse's 2 passes through. With GN_MXNET_DEBUG=1 the
    exception propagates with its traceback. Scripts end with ``sys.exit(cli.run(main))``."""
    try:
        status = main(argv)
    except KeyboardInterrupt:
        if debugging():
            raise
        return fail(interrupted, 130)
    except Exception as error:   # SystemExit (argparse, sys.exit) is not an Exception
        if debugging():
            raise
        return fail(error, 1)
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def format_default(value):
    """A default as a user types it: '1,2,3' for a sequence, 'none' for None or ''."""
    if value is None or value == '':
        return 'none'
    if isinstance(value, (tuple, list)):
        return ','.join(format_default(v) for v in value)
    if isinstance(value, float):
        return f'{value:g}'
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends in its default, ``(default: 0.9)``, unless the help already
    says it (the word 'default', e.g. a preset's values) or there is none to show (None, or a
    switch, which is off unless given). The description keeps its own line breaks (usage
    examples)."""

    @staticmethod
    def _default_text(action):
        default = action.default
        if (not action.option_strings or action.nargs == 0   # a switch: off unless given
                or default is None or default is argparse.SUPPRESS
                or (isinstance(default, (list, tuple)) and not default)):   # e.g. append's []
            return None
        return format_default(default).replace('%', '%%')

    def _format_action(self, action):
        if action.help is None and self._default_text(action):   # argparse shows no help then
            action = copy.copy(action)
            action.help = f"default: {self._default_text(action)}"
        return super()._format_action(action)

    def _get_help_string(self, action):
        help, shown = action.help or '', self._default_text(action)
        if shown is None or 'default' in help:
            return help
        return f"{help} (default: {shown})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors end in the one line every script's errors end in:
    ``error: argument --lr: ...`` and exit 2 (not argparse's usage line and ``prog: error:``),
    and whose --help shows every default (HelpFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('formatter_class', HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


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


def add_choice(parser, flag, module, name, help='', preset=None, **kwargs):
    """Adds option `flag` whose values are `module`.`name` (see Choices). The usage line shows a
    metavar instead of the values, so that the usage printed with any error, e.g. a bad number,
    does not import `module`; --help still lists them, and with `preset` (a PresetText) each
    data set's default."""
    metavar = flag.lstrip('-').upper().replace('-', '_')
    text = f"{help + '; ' if help else ''}one of %(choices)s"
    action = parser.add_argument(flag, choices=Choices(module, name), metavar=metavar,
                                 help=text + (PRESET_HELP if preset else ''), **kwargs)
    if preset:
        action.preset = preset   # argparse fills %(preset)s from the action's attributes
    return action


def per_preset(presets, field):
    """The value of `field` in each preset of table `presets` ({name: {field: value}}), as help
    text: '32' when all agree, else '0.8 (mnist5k, fashion-mnist), 0.1 (imagenet)'."""
    names = {}
    for name, preset in presets.items():
        names.setdefault(format_default(preset.get(field)), []).append(name)
    if len(names) == 1:
        return next(iter(names))
    return ', '.join(f"{value} ({', '.join(who)})" for value, who in names.items())


PRESET_HELP = '; default per --dataset: %(preset)s'


class PresetText:
    """The text of per_preset(`module`.`name`, `field`), computed when first shown, so that the
    preset table's module (which may import MXNet) is imported only when --help is printed."""

    def __init__(self, module, name, field):
        self.module, self.name, self.field = module, name, field

    def __str__(self):
        return per_preset(getattr(importlib.import_module(self.module), self.name), self.field)


def add_preset(parser, flags, module, name, field, help='', **kwargs):
    """Adds an option whose default comes from a preset table (`module`.`name`, one dict per
    data set) and whose help says so, listing each preset's value of `field`: ``lr for a total
    batch of 256; default per --dataset: 0.8 (mnist5k, fashion-mnist), 0.1 (imagenet)``.
    `flags` is one option string or a tuple of them (the canonical one first); a `help` that
    holds ``%(preset)s`` places the values itself."""
    flags = (flags,) if isinstance(flags, str) else tuple(flags)
    if '%(preset)s' in help:   # the help places the values itself
        text = help
    else:
        text = help + PRESET_HELP if help else PRESET_HELP.lstrip('; ')
    action = parser.add_argument(*flags, help=text, **kwargs)
    action.preset = PresetText(module, name, field)   # argparse fills %(preset)s from it
    return action


@contextlib.contextmanager
def usage_errors(parser, *errors):
    """Inside the block, a library's validation error (ValueError unless other types are named)
    becomes ``parser.error``: a usage error, exit code 2."""
    try:
        yield
    except errors or (ValueError,) as error:
        parser.error(one_line(error))


def existing_file(text, option=None):
    """A converter for `type=`; called with `option`, a check that raises ValueError naming it."""
    if not os.path.isfile(text):
        if option:
            raise ValueError(f"{option}: no such file: {text!r}")
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def output_folder(text, option):
    """Refuses (ValueError naming `option`) an output folder that is an existing file; a folder
    that does not exist yet is made by the run."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise ValueError(f"{option} {text} is a file, not a folder; name a folder")
    return text


def existing_dir(text):
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    return text
