"""Random cases against the float64 reference on every run: forward and all three gradients.

2-D to 5-D, every spelling of the channel axis, eps from 0 to 1, float64/float32/float16 data
(float16 with float16 and with float32 gamma/beta), offsets that test the precision scheme
(|mean| >> std, near-constant groups), tensors above the CPU kernels' one-thread grain,
float16 groups whose sums float16 could not hold, huge |x| whose squares overflow (float32
1e19-1e30, float64 1e155-1e300), every backend, imperatively and in bound Symbols. Each run
draws a fresh seed; a failure prints it with the case, and
`GN_FUZZ_SEED=<seed> GN_FUZZ_CASE=<i>` replays one case (GN_FUZZ_CASES sets the count).
"""
import os
import random
import traceback
from typing import NamedTuple, Tuple

import numpy as np
import pytest

import gn_mxnet
from gn_checks import check_results, make_inputs, run, run_symbolic, to_channels_last

CASES = int(os.environ.get('GN_FUZZ_CASES', '1200'))
GRAIN = 32 * 1024  # elements per thread of the CPU kernels (docs/design.md §3)
FLOAT16_MAX = 65504.0
RUNNERS = {'ndarray': run, 'symbol': run_symbolic}
# One cycle of case kinds; case i is kind i % len(KINDS) and backend i % 3, so every run
# holds each kind for each backend (len(KINDS) and 3 have no common factor).
KINDS = (['big', 'big_float16', 'float16_sums', 'float16_sums_symbol']
         + ['symbol'] * 4 + ['huge_float32', 'huge_float64'] + ['small'] * 30)
# log10 of |x| for the 'huge' kinds: from where the kernels' sums of squares overflow to the
# largest magnitude promised right (docs/design.md §2).
HUGE_LOG10 = {'float32': (19, 30), 'float64': (155, 300)}


class Case(NamedTuple):
    backend: str
    runner: str
    shape: Tuple[int, ...]
    groups: int
    axis: int
    eps: float
    dtype: str
    param_dtype: str
    offset: float
    spread: float
    seed: int

    @property
    def group_size(self):
        return int(np.prod(self.shape)) // (self.shape[0] * self.groups)


def _spatial(rng, ndim, elements):
    """ndim - 2 spatial sizes whose product is about `elements`."""
    dims = []
    for left in range(ndim - 2, 0, -1):
        dims.append(max(1, int(round((elements / max(np.prod(dims), 1)) ** (1 / left)
                                     * rng.uniform(0.7, 1.4)))))
    return dims


def draw_case(master_seed, index):
    rng = np.random.RandomState([master_seed, index])
    kind = KINDS[index % len(KINDS)]
    backend = gn_mxnet.BACKENDS[index % len(gn_mxnet.BACKENDS)]
    ndim = rng.randint(2, 6)
    groups, per_group = rng.randint(1, 7), rng.randint(1, 6)
    batch = rng.randint(1, 4)
    if kind.startswith('float16_sums'):
        # Groups of 4k-16k elements, offset so that their sums pass twice float16's 65504:
        # only statistics kept in float32 pass.
        ndim, batch = max(ndim, 3), rng.randint(1, 3)
        spatial = _spatial(rng, ndim, rng.randint(4096, 16384) / per_group)
        group_size = per_group * int(np.prod(spatial))
        spread = 2.0
        offset = max(float(rng.uniform(20, 100)), 2 * FLOAT16_MAX / group_size + 4 * spread)
    elif kind.startswith('big'):
        # 70k-200k elements: several threads, each past the 32k grain.
        ndim = max(ndim, 3)
        total = rng.randint(int(2.2 * GRAIN), int(6 * GRAIN))
        spatial = _spatial(rng, ndim, total / (batch * groups * per_group))
        offset, spread = [(0.0, 2.0), (1000.0, 2.0), (3.0, 1e-3)][rng.randint(3)]
    elif kind.startswith('huge'):
        spatial = [rng.randint(1, 7) for _ in range(ndim - 2)]
        spread = 10.0 ** rng.uniform(*HUGE_LOG10[kind[len('huge_'):]])
        offset = spread * [0.0, 3.0][rng.randint(2)]
    else:
        spatial = [rng.randint(1, 7) for _ in range(ndim - 2)]
        offset, spread = [(0.0, 2.0), (0.0, 2.0), (1000.0, 2.0), (3.0, 1e-3)][rng.randint(4)]
    if kind == 'big_float16' or kind.startswith('float16_sums'):
        dtype = 'float16'
    elif kind.startswith('huge'):
        dtype = kind[len('huge_'):]
    else:
        dtype = ['float32', 'float32', 'float64', 'float16'][rng.randint(4)]
    if dtype == 'float16' and offset == 1000.0:
        offset = 100.0  # float16 spacing at 1000 is 0.5: x itself would be mostly rounding
    param_dtype = ['float16', 'float32'][rng.randint(2)] if dtype == 'float16' else dtype
    shape = (batch, groups * per_group) + tuple(spatial)
    channels_last = bool(rng.randint(2))
    if channels_last:
        shape, axis = to_channels_last(shape), [-1, ndim - 1][rng.randint(2)]
    else:
        axis = [1, 1 - ndim][rng.randint(2)]
    group_size = per_group * int(np.prod(spatial, dtype=np.int64))
    eps_choices = [1e-5, 1e-5, 1e-3, 0.1, 1.0]
    if group_size >= 8 and spread >= 1:
        eps_choices.append(0.0)  # var > 0 almost surely; eps = 0 is allowed
    runner = 'symbol' if kind in ('symbol', 'float16_sums_symbol') else 'ndarray'
    return Case(backend, runner, shape, int(groups), int(axis),
                float(eps_choices[rng.randint(len(eps_choices))]), dtype, param_dtype,
                offset, spread, int(rng.randint(2**31)))


def check_case(case):
    x, dy, gamma, beta = make_inputs(case.shape, case.axis, case.dtype, case.param_dtype,
                                     case.seed, case.offset, case.spread)
    results = RUNNERS[case.runner](case.backend, x, gamma, beta, dy, case.groups, case.axis,
                                   case.eps)
    check_results(results, x, dy, gamma, beta, case.groups, case.axis, case.eps)


@pytest.mark.parametrize('seed', (0, 1, 2))
def test_draws_cover_what_the_fuzz_promises(seed):
    cases = [draw_case(seed, i) for i in range(CASES)]
    assert len(cases) >= 1000
    for backend in gn_mxnet.BACKENDS:
        mine = [c for c in cases if c.backend == backend]
        assert {c.runner for c in mine} == set(RUNNERS)
        assert {len(c.shape) for c in mine} == {2, 3, 4, 5}
        assert {c.axis for c in mine} >= {1, -1, 2, 3, 4, -2, -3, -4}
        assert {(c.dtype, c.param_dtype) for c in mine} == {
            ('float64', 'float64'), ('float32', 'float32'), ('float16', 'float16'),
            ('float16', 'float32')}
        assert sum(np.prod(c.shape) > 2 * GRAIN for c in mine) >= 10
        for runner in RUNNERS:
            overflowing = [c for c in mine if c.runner == runner and c.dtype == 'float16'
                           and c.group_size * (c.offset - 4 * c.spread) > FLOAT16_MAX]
            assert len(overflowing) >= 8, (backend, runner)
        for dtype, (low, _) in HUGE_LOG10.items():
            huge = [c for c in mine if c.dtype == dtype and c.spread >= 10.0 ** low]
            assert len(huge) >= 10, (backend, dtype)


def test_random_cases_match_reference(native_library):
    seed = int(os.environ.get('GN_FUZZ_SEED') or random.SystemRandom().randrange(2**32))
    only = os.environ.get('GN_FUZZ_CASE')
    indices = [int(only)] if only else range(CASES)
    print(f'GN_FUZZ_SEED={seed}: {len(indices)} cases')
    failures = []
    for index in indices:
        case = draw_case(seed, index)
        try:
            check_case(case)
        except Exception as error:  # a crash fails the case like a wrong value does
            failures.append(f'case {index}: {case}\n  {type(error).__name__}: {error}\n'
                            f'  replay: GN_FUZZ_SEED={seed} GN_FUZZ_CASE={index} '
                            f'python -m pytest -q tests/test_fuzz.py -k random')
            if only:
                traceback.print_exc()
    assert not failures, (f'{len(failures)} of {len(indices)} cases failed '
                          f'(GN_FUZZ_SEED={seed}):\n' + '\n'.join(failures[:12]))
