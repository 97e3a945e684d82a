#!/usr/bin/env python
"""Run a command as a distributed MXNet job (ps-lite: scheduler, servers, workers).

  # 2 workers + 1 server on this machine
  python train/launch.py -n 2 -s 1 -- python train/train_imagenet.py --kv-store dist_sync
  # 4 machines (one host per line in hosts.txt; same checkout path and venv on each)
  python train/launch.py -n 4 -s 4 -H hosts.txt -- \\
      /path/to/.venv/bin/python train/train_imagenet.py --kv-store dist_sync --gpus 0,1,2,3 ...

The logic lives in gn_mxnet.training.launcher (standard library only: no MXNet needed here);
this script only parses arguments. When a node fails it ends every other node (remote ones over
ssh) and exits 1 naming the node; bad arguments exit 2.
"""
import argparse
import signal
import sys

from gn_mxnet.utils import cli


def make_parser():
    p = cli.ArgumentParser(description=__doc__.split('\n\n')[0],
                           epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('-n', '--num-workers', type=cli.positive_int, required=True)
    p.add_argument('-s', '--num-servers', type=cli.positive_int,
                   help='default: as many as workers')
    p.add_argument('-H', '--hostfile', type=cli.existing_file,
                   help='one host per line; none: all on 127.0.0.1')
    p.add_argument('--root-uri', help="scheduler address (default: the first host's)")
    p.add_argument('--port', type=cli.int_range(1, 65535),
                   help='scheduler port (default: a free one)')
    p.add_argument('--timeout', type=cli.positive_float,
                   help='seconds before the whole job is stopped')
    p.add_argument('--out-dir', help="write each node's output to OUT_DIR/<role><i>.log "
                                     "(none: to this terminal)")
    p.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                   help='extra environment for every node (repeatable)')
    p.add_argument('command', nargs=argparse.REMAINDER, help='the command after --')
    return p


def parse_args(argv=None, parser=None):
    p = parser or make_parser()
    args = p.parse_args(argv)
    if args.command and args.command[0] == '--':
        args.command = args.command[1:]
    if not args.command:
        p.error('give the command to run after --')
    args.extra_env = {}
    for item in args.env:
        key, sep, value = item.partition('=')
        if not sep or not key:
            p.error(f"argument --env: wants KEY=VALUE, got {item!r}")
        args.extra_env[key] = value
    return args


def main(argv=None):
    parser = make_parser()
    args = parse_args(argv, parser)
    from gn_mxnet.training import launcher
    with cli.usage_errors(parser, ValueError, launcher.LaunchError):  # no hosts, unknown ones
        hosts = launcher.read_hostfile(args.hostfile) if args.hostfile else None
        for host in (hosts or []) + [args.root_uri or '127.0.0.1']:
            launcher.resolve(host)
    # SIGTERM (a cluster scheduler, `kill`) unwinds like Ctrl-C, so the job is stopped first.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        job = launcher.run(args.command, args.num_workers, args.num_servers or args.num_workers,
                           hosts=hosts, root_uri=args.root_uri, port=args.port,
                           extra_env=args.extra_env, log_dir=args.out_dir,
                           timeout=args.timeout)
    except launcher.LaunchError as error:
        return cli.fail(f"the job failed and was stopped: {cli.one_line(error)}", 1)
    except KeyboardInterrupt:
        return cli.fail("interrupted; every node was stopped", 130)
    print(' '.join(f'{n.name}={n.returncode}' for n in job.nodes))
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
