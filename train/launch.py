#!/usr/bin/env python
"""Run a command as a distributed MXNet job (ps-lite: scheduler, servers, workers).

  # 2 workers + 1 server on this machine
  python train/launch.py -n 2 -s 1 -- python train/train_imagenet.py --kv-store dist_sync
  # 4 machines (one host per line in hosts.txt; same checkout path and venv on each)
  python train/launch.py -n 4 -s 4 -H hosts.txt -- \\
      /path/to/.venv/bin/python train/train_imagenet.py --kv-store dist_sync --gpus 0,1,2,3 ...

The logic lives in gn_mxnet.training.launcher (standard library only: no MXNet needed here);
this script only parses arguments.
"""
import argparse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('-n', '--num-workers', type=int, required=True)
    p.add_argument('-s', '--num-servers', type=int, help='default: as many as workers')
    p.add_argument('-H', '--hostfile', help='one host per line; none: all on 127.0.0.1')
    p.add_argument('--root-uri', help="scheduler address (default: the first host's)")
    p.add_argument('--port', type=int, help='scheduler port (default: a free one)')
    p.add_argument('--timeout', type=float, help='seconds before the whole job is stopped')
    p.add_argument('--log-dir', help="write each node's output to LOG_DIR/<role><i>.log")
    p.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                   help='extra environment for every node (repeatable)')
    p.add_argument('command', nargs=argparse.REMAINDER, help='the command after --')
    args = p.parse_args(argv)
    if args.command and args.command[0] == '--':
        args.command = args.command[1:]
    if not args.command:
        p.error('give the command to run after --')
    return args


def main(argv=None):
    args = parse_args(argv)
    from gn_mxnet.training import launcher
    extra_env = {}
    for item in args.env:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ValueError(f"--env wants KEY=VALUE, got {item!r}")
        extra_env[key] = value
    hosts = launcher.read_hostfile(args.hostfile) if args.hostfile else None
    job = launcher.run(args.command, args.num_workers, args.num_servers or args.num_workers,
                       hosts=hosts, root_uri=args.root_uri, port=args.port,
                       extra_env=extra_env, log_dir=args.log_dir, timeout=args.timeout)
    print(' '.join(f'{n.name}={n.returncode}' for n in job.nodes))


if __name__ == '__main__':
    main()
