"""Public entry point: ``python -m gn_mxnet.migrate DIR...`` converts each run folder's pickled
checkpoint of an earlier version (checkpoint.pkl) into this version's data-only checkpoint,
reading the pickle with nothing but the arrays and optimizer values such a file holds
(gn_mxnet.training.checkpoint_migration). A folder written before run records existed gets one
listing the classifier's or the detector's files found there, so the run resumes.

It sits above both trainers because it names the files of each."""
import sys

from .utils import cli

__all__ = ['main']


def main(argv=None):
    """`python -m gn_mxnet.migrate DIR...`: in each run folder, write this version's checkpoint
    from checkpoint.pkl, then remove the pickle (`argv` defaults to the command line). Prints
    what it wrote; returns 0."""
    parser = cli.ArgumentParser(prog='python -m gn_mxnet.migrate',
                                description=__doc__.split('\n\n')[0])
    parser.add_argument('dirs', nargs='+', metavar='DIR',
                        help='a run folder holding a checkpoint.pkl you trust')
    args = parser.parse_args(argv)
    from .detection import engine
    from .training import loop
    from .training.checkpoint_migration import migrate
    run_files = set(loop.RUN_FILES) | set(engine.RUN_FILES)
    for out_dir in args.dirs:
        new, recorded = migrate(out_dir, run_files)
        note = f"; recorded as the run's files: {', '.join(sorted(recorded))}" if recorded else ''
        print(f"{out_dir}: wrote {new}{note}")
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
