"""Many GroupNormalization calls at once, some failing: run by tests/test_concurrent_errors.py
in a process of its own, with MXNET_CPU_WORKER_NTHREADS > 1.

Python threads each queue forward and backward passes (run by MXNet's engine threads) and, in
between, calls that fail in shape or type inference (run on the calling thread), each with
its own message. Every failing call must raise MXNetError naming its own problem and nothing
else; every good result must match the float64 reference. Prints one line, `ok <calls>`, or
the problems found, and exits 1 on any.

usage: concurrent_calls.py ROUNDS THREADS [LIBRARY]   (LIBRARY: load this .so instead of
gn_mxnet's, e.g. an older build to compare with)
"""
import os
import sys
import threading

import mxnet as mx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gn_reference as ref  # noqa: E402

# (data shape, gamma shape, dtype, attributes, the message's words): each fails before the
# op is queued, in parseAttrs, inferType or inferShape.
FAILING = [
    ((2, 6, 4), (6,), 'float32', dict(num_groups=4),
     'num_groups (4) must divide the number of channels (6)'),
    ((2, 6, 4), (3,), 'float32', dict(num_groups=3), 'gamma must have shape (6,)'),
    ((6,), (6,), 'float32', dict(num_groups=3), 'data must have 2 to 5 dimensions'),
    ((2, 6, 4), (6,), 'float32', dict(num_groups=3, axis=5), 'axis 5 is out of range'),
    ((2, 6, 4), (6,), 'int32', dict(num_groups=3), 'data dtype must be one of'),
    ((2, 6, 4), (6,), 'float32', dict(num_groups=0), 'num_groups must be >= 1'),
]
PASSES_PER_ROUND = 6


def good_case(seed):
    rng = np.random.RandomState(seed)
    shape, groups = ((4, 8, 6, 6), 4) if seed % 2 else ((3, 12, 5), 3)
    x = rng.randn(*shape).astype('f4') * 2 + 1
    dy = rng.randn(*shape).astype('f4')
    gamma, beta = rng.randn(shape[1]).astype('f4'), rng.randn(shape[1]).astype('f4')
    dx, dgamma, dbeta = ref.backward(dy, x, gamma, groups)
    return (x, dy, gamma, beta, groups), (ref.forward(x, gamma, beta, groups), dx, dgamma, dbeta)


def queue_pass(inputs):
    """Forward and backward queued on the engine; returns the arrays that will hold them."""
    x, dy, gamma, beta, groups = inputs
    arrays = [mx.nd.array(a) for a in (x, gamma, beta)]
    for a in arrays:
        a.attach_grad()
    with mx.autograd.record():
        y = mx.nd.GroupNormalization(*arrays, num_groups=groups)[0]
    y.backward(mx.nd.array(dy))
    return [y] + [a.grad for a in arrays]


def failing_call(case):
    """The problem with one failing call's outcome, or None when it is right."""
    shape, gamma_shape, dtype, attrs, words = case
    try:
        mx.nd.GroupNormalization(mx.nd.ones(shape, dtype=dtype),
                                 mx.nd.ones(gamma_shape, dtype=dtype),
                                 mx.nd.ones(gamma_shape, dtype=dtype), **attrs)
    except mx.base.MXNetError as e:
        text = str(e)
        # MXNet lists the library's messages as "\t[i] ..." lines: exactly one, this call's.
        if words not in text or text.count('\t[') != 1:
            return 'for %r the error was %r' % (words, text[-400:])
        return None
    return 'no error for %r' % words


def worker(index, rounds, cases, problems, counter):
    rng = np.random.RandomState(index)
    for _ in range(rounds):
        queued = []
        for _ in range(PASSES_PER_ROUND):
            case = rng.randint(len(cases))
            queued.append((case, queue_pass(cases[case][0])))
            problem = failing_call(FAILING[rng.randint(len(FAILING))])
            if problem:
                problems.append(problem)
        for case, arrays in queued:
            for name, got, want in zip(('y', 'dx', 'dgamma', 'dbeta'), arrays, cases[case][1]):
                err = np.abs(got.asnumpy() - want).max() / max(np.abs(want).max(), 1.0)
                if not err < 1e-4:
                    problems.append('%s of case %d: error %.3g' % (name, case, err))
        counter.append(2 * PASSES_PER_ROUND)


def main():
    rounds, threads = int(sys.argv[1]), int(sys.argv[2])
    if len(sys.argv) > 3:
        mx.library.load(sys.argv[3], verbose=False)
    else:
        import gn_mxnet
        gn_mxnet.load_library()
    cases = [good_case(seed) for seed in range(4)]
    problems, counter = [], []
    pool = [threading.Thread(target=worker, args=(i, rounds, cases, problems, counter))
            for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if problems:
        print('%d problems, e.g.:\n%s' % (len(problems), '\n'.join(problems[:5])))
        sys.exit(1)
    print('ok %d' % sum(counter))


if __name__ == '__main__':
    main()
