#!/usr/bin/env python
"""Training img/s of one network with BatchNorm vs GroupNorm (or GN vs GN with
weight-standardized convs, --conv ws), measured in one run.

  python benchmarks/bench_train.py                                   # the default MNIST net
  python benchmarks/bench_train.py --network resnet50_v1b --data-shape 3,224,224 \
      --num-classes 1000 --num-groups 32 --gpus 0 --batch-size 32
  python benchmarks/bench_train.py --conv ws            # GN+WS vs GN
  python benchmarks/bench_train.py --breakdown          # where each norm's step time goes
"""
import os
import sys

import numpy as np

from gn_mxnet.utils import cli


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--network', default='resnet8_small')
    p.add_argument('--batch-size', type=cli.positive_int, default=32, help='per device')
    p.add_argument('--data-shape', default='1,28,28')
    p.add_argument('--num-classes', type=cli.positive_int, default=10)
    p.add_argument('--num-groups', type=cli.positive_int, default=8)
    cli.add_choice(p, '--gn-backend', 'gn_mxnet.operator.validation', 'BACKENDS',
                   default='native')
    cli.add_choice(p, '--conv', 'gn_mxnet.models.convs', 'CONVS', default='plain',
                   help="plain: BN vs GN; ws: GN vs GN with weight-standardized convs")
    cli.add_choice(p, '--ws-backend', 'gn_mxnet.operator.validation', 'WS_BACKENDS',
                   default=None, help="with --conv ws (default: the operator's default)")
    p.add_argument('--gpus', default='', help="GPU ids, e.g. 0; none ('') = CPU")
    p.add_argument('--steps', type=cli.positive_int, default=20, help='steps per timed round')
    p.add_argument('--rounds', type=cli.positive_int, default=None,
                   help='timed rounds per arm (median; the ratio round by round); default '
                        '11, and 5 with --breakdown')
    p.add_argument('--warmup', type=cli.non_negative_int, default=5,
                   help='untimed steps per arm before the rounds')
    p.add_argument('--breakdown', action='store_true',
                   help='profile --rounds x --steps steps of bn (gn+ws with --conv ws), gn and '
                        'the net without norm layers (mx.profiler, oneDNN reorders) and print '
                        'where the time goes')
    p.add_argument('--without-plain-copy', action='store_true',
                   help="with --breakdown: also GN without the native front's plain-copy "
                        "Reshape (what MXNet's lib_api dispatcher does alone)")
    args = p.parse_args(argv)
    if args.ws_backend is not None and args.conv != 'ws':
        p.error('--ws-backend needs --conv ws')
    # (baseline, measured): the ratio printed is measured / baseline
    args.arms = ('gn', 'gn+ws') if args.conv == 'ws' else ('bn', 'gn')
    if args.rounds is None:
        args.rounds = 5 if args.breakdown else 11
    if args.breakdown:
        return breakdown(args)
    from gn_mxnet.training.config import parse_shape
    from gn_mxnet.training.runtime import parse_gpus
    from gn_mxnet.training.step_profile import machine_header
    from gn_mxnet.training.throughput import PairedRatio, measure_rounds
    with cli.usage_errors(p):
        data_shape = parse_shape(args.data_shape)
        parse_gpus(args.gpus)
    print(machine_header())
    rates = measure_rounds(args.network, args.arms, args.batch_size,
                           data_shape, args.num_classes, args.num_groups,
                           args.gn_backend, args.gpus, args.steps, args.warmup, args.rounds,
                           ws_backend=args.ws_backend)
    where = f"GPU {args.gpus}" if args.gpus else 'CPU'
    ws = ''
    if args.conv == 'ws':
        from gn_mxnet.operator.weight_standardization import DEFAULT_BACKEND
        ws = f", WS backend {args.ws_backend or DEFAULT_BACKEND}"
    print(f"{args.network}, batch {args.batch_size}/device, input {args.data_shape}, {where}, "
          f"GN backend {args.gn_backend}{ws}, G={args.num_groups}, {args.rounds} rounds of "
          f"{args.steps} steps per arm after {args.warmup} warm-up steps")
    base, measured = args.arms
    ratio = PairedRatio.of(rates, measured, base)
    name = f"{measured}/{base}"
    print(f"{'round':<7}{base + ' img/s':>12}{measured + ' img/s':>14}{name:>10}")
    for index, (b, m, r) in enumerate(zip(rates[base], rates[measured], ratio.ratios)):
        print(f"{index + 1:<7}{b:>12.2f}{m:>14.2f}{r:>10.3f}")
    print(f"{'arm':<7}{'median img/s':>14}{'min':>10}{'max':>10}")
    for arm, values in rates.items():
        print(f"{arm:<7}{np.median(values):>14.2f}{min(values):>10.2f}{max(values):>10.2f}")
    low, high = ratio.quartiles
    goal = 0.95 if args.conv == 'ws' else 1.0   # WS: issue 26's goal; GN: BN's speed
    print(f"{measured.upper()} / {base.upper()} img/s ratio, round by round: median "
          f"{ratio.median:.3f}, quartiles {low:.3f}-{high:.3f}, range "
          f"{min(ratio.ratios):.3f}-{max(ratio.ratios):.3f}, "
          f"{ratio.rounds_at_least(goal)} of {len(ratio.ratios)} rounds >= {goal}")
    print(f"after the run: {machine_header()}")
    return rates


def breakdown(args):
    from gn_mxnet.training import step_profile
    for name, value in step_profile.environment_for_profiling().items():
        os.environ.setdefault(name, value)  # before MXNet builds its first graph
    from gn_mxnet.training.config import parse_shape
    with step_profile.NativeStdoutLog() as log:
        print(step_profile.machine_header())
        found = step_profile.profile_norms(
            args.network, args.arms + ('none',), args.batch_size,
            parse_shape(args.data_shape), args.num_classes, args.num_groups, args.gn_backend,
            args.gpus, args.steps, args.warmup, log, args.rounds, args.without_plain_copy,
            ws_backend=args.ws_backend)
        print(f"{args.network}, batch {args.batch_size}, input {args.data_shape}, "
              f"G={args.num_groups}, GN backend {args.gn_backend}, {args.rounds} rounds of "
              f"{args.steps} profiled steps per norm after {args.warmup} warm-up steps, "
              f"operators unbulked, oneDNN verbose on")
        print(step_profile.format_report(found))
        print(f"after the run: {step_profile.machine_header()}")
    return found


if __name__ == '__main__':
    sys.exit(cli.run(main))
