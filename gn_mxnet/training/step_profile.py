"""Where one hybridized training step's time goes, per norm: mx.profiler's operator times
grouped by cause, and oneDNN's layout conversions (reorders) counted and timed.

A lib_api op gets no MKLDNN layouts: MXNet's dispatcher converts each MKLDNN-blocked input
to the default layout into fresh memory on every call (forward and backward), and the next
convolution converts back inside itself (docs/design.md §3). Those reorders run inside the
operators mx.profiler names, so they are counted from oneDNN's verbose log, which names each
reorder's source and destination layout. Comparing a norm's net with the same net without
norm layers ('none') leaves the norm's own cost per cause.
"""
import ctypes
import os
import platform
import resource
import tempfile
import time

import mxnet as mx
from mxnet import profiler

from ..operator import native
from ..operator.op_inputs import OP_NAME
from ..operator.weight_standardization import OP_NAME as WS_OP_NAME
from .runtime import make_contexts
from .throughput import WS_SUFFIX, build_step

# Read by MXNet when a hybridized graph is built: without bulking every operator is its own
# profiler event (bulked segments are timed as one event named after all their ops).
_UNBULKED = {'MXNET_EXEC_BULK_EXEC_TRAIN': '0', 'MXNET_EXEC_BULK_EXEC_INFERENCE': '0'}
# oneDNN reads these once, at its first primitive; level 1 logs each primitive run with its time.
_VERBOSE = {'DNNL_VERBOSE': '1', 'MKLDNN_VERBOSE': '1'}

NORM_OPS = ('BatchNorm', OP_NAME)
WS_OPS = (WS_OP_NAME,)  # the native backend's; the 'ops' backend's stock ops are not told apart
# Operator name -> cause, for the operators that are not the norm itself.
_CAUSES = {
    '_copy': 'guards and copies', '_backward_copy': 'guards and copies',
    'identity': 'guards and copies', 'expand_dims': 'guards and copies',
    'squeeze': 'guards and copies', 'Reshape': 'guards and copies',
    '_backward_reshape': 'guards and copies', 'CopyCPU2CPU': 'guards and copies',
    '_zeros_without_dtype': 'zero gradients of unused outputs',
    '_zeros': 'zero gradients of unused outputs',
    'DeleteVariable': 'freeing memory (DeleteVariable)',
    'Convolution': 'convolutions', '_backward_Convolution': 'convolutions',
    'Activation': 'activations', '_backward_Activation': 'activations',
}
ROWS = ('norm operators', 'weight standardization', 'guards and copies', 'zero gradients of unused outputs',
        'freeing memory (DeleteVariable)', 'convolutions', 'activations', 'other operators')
REORDERS = ('to default layout', 'to blocked layout', 'weights', 'other reorders')
# What the whole process spent per step beyond its operators' clocks (getrusage, all threads): a
# first write to fresh memory page-faults, and the kernel's time for it is system CPU time.
PROCESS = ('minor page faults', 'system CPU ms')


def cause(op_name):
    """The row of ROWS an operator's time is counted in."""
    forward = op_name.replace('_backward_', '', 1)
    if op_name in NORM_OPS or forward in NORM_OPS:
        return 'norm operators'
    if forward in WS_OPS:
        return 'weight standardization'
    return _CAUSES.get(op_name, 'other operators')


def _layout(descriptor):
    """'src_f32::blocked:aBcd8b:f0' -> 'aBcd8b'."""
    parts = descriptor.split(':')
    return parts[3] if len(parts) > 3 else ''


def reorder_kind(src, dst):
    """A reorder by its layouts: plain layouts are all lower case (abcd, acdb); activations
    blocked by channel have a lower-case first dim (aBcd8b); weights block their first dim."""
    plain_src, plain_dst = src.islower(), dst.islower()
    if src[:1].isupper() or dst[:1].isupper():
        return 'weights'
    if not plain_src and plain_dst:
        return 'to default layout'
    if plain_src and not plain_dst:
        return 'to blocked layout'
    return 'other reorders'


def parse_onednn_log(text):
    """{kind: [count, ms]} of the reorders in a oneDNN verbose log."""
    found = {kind: [0, 0.0] for kind in REORDERS}
    for line in text.splitlines():
        fields = line.split(',')
        if len(fields) < 10 or fields[:2] != ['dnnl_verbose', 'exec'] or fields[3] != 'reorder':
            continue
        descriptors = fields[6].split()
        if len(descriptors) != 2:
            continue
        entry = found[reorder_kind(_layout(descriptors[0]), _layout(descriptors[1]))]
        entry[0] += 1
        entry[1] += float(fields[-1])
    return found


class NativeStdoutLog:
    """Sends the process's C-level stdout (oneDNN's verbose log) to a temporary file while
    Python's own prints still reach the original stdout; `read_since(mark)` returns what
    the C side wrote after `mark()`."""

    def __init__(self):
        self._libc = ctypes.CDLL(None)
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(1)
        self._python_stdout = None

    def __enter__(self):
        import sys
        sys.stdout.flush()
        self._python_stdout = sys.stdout
        sys.stdout = open(os.dup(self._saved), 'w', buffering=1)
        os.dup2(self._file.fileno(), 1)
        return self

    def __exit__(self, *exc):
        import sys
        self._libc.fflush(None)
        os.dup2(self._saved, 1)
        sys.stdout.close()
        sys.stdout = self._python_stdout
        os.close(self._saved)
        self._file.close()

    def mark(self):
        self._libc.fflush(None)
        return os.fstat(self._file.fileno()).st_size

    def read_since(self, mark):
        end = self.mark()
        return os.pread(self._file.fileno(), end - mark, mark).decode(errors='replace')


def machine_header():
    """CPU model, cores, MKLDNN setting, OpenMP threads and load: what a table must name."""
    model = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as info:
            model = next(line.split(':', 1)[1].strip() for line in info
                         if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    built = mx.runtime.Features().is_enabled('MKLDNN')
    enabled = os.environ.get('MXNET_MKLDNN_ENABLED', '1') != '0'
    mkldnn = 'on' if built and enabled else ('off (MXNET_MKLDNN_ENABLED=0)' if built
                                             else 'off (not built)')
    load = ', '.join(f'{v:.2f}' for v in os.getloadavg())
    return (f"CPU: {model}, {len(os.sched_getaffinity(0))} cores usable of {os.cpu_count()}; "
            f"MKLDNN {mkldnn}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
            f"load average (1, 5, 15 min): {load}")


def _operator_times(stats):
    """{op name: [count, total ms]} from profiler.dumps(format='json')'s operator table."""
    import json
    table = json.loads(stats).get('Time', {}).get('operator', {})
    return {name: [entry['Count'], entry['Total']] for name, entry in table.items()}


def _usage():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return dict(zip(PROCESS, (usage.ru_minflt, 1e3 * usage.ru_stime)))


def _profiled(step, steps, log):
    """({op: [count, ms]}, {reorder kind: [count, ms]} or {}, wall seconds, {PROCESS kind:
    total}) of `steps` steps."""
    mark = log.mark() if log else None
    profiler.set_config(profile_all=True, aggregate_stats=True,
                        filename=os.path.join(tempfile.gettempdir(),
                                              f'gn_mxnet_profile_{os.getpid()}.json'))
    profiler.set_state('run')
    before, start = _usage(), time.perf_counter()
    for _ in range(steps):
        step()
    mx.nd.waitall()
    elapsed, after = time.perf_counter() - start, _usage()
    profiler.set_state('stop')
    ops = _operator_times(profiler.dumps(reset=True, format='json'))
    if any(',' in name for name in ops):
        raise RuntimeError('operators were bulked into one profiler event; build the networks '
                           'with ' + ' and '.join(f'{k}=0' for k in UNBULKED))
    process = {kind: after[kind] - before[kind] for kind in PROCESS}
    return ops, parse_onednn_log(log.read_since(mark)) if log else {}, elapsed, process


def _add(total, part):
    for key, (count, ms) in part.items():
        entry = total.setdefault(key, [0, 0.0])
        entry[0] += count
        entry[1] += ms


def profile_norms(network='resnet8_small', norms=('bn', 'gn', 'none'), batch_size=32,
                  data_shape=(1, 28, 28), num_classes=10, num_groups=8, backend='native',
                  gpus='', steps=3, warmup=2, log=None, rounds=2, without_plain_copy=False,
                  ws_backend=None):
    """`profile_steps` of `network` built as each of `norms` (arms of
    gn_mxnet.training.throughput: 'gn+ws' has weight-standardized convs, of `ws_backend`);
    `without_plain_copy` adds GN with the native front's plain-copy Reshape switched off, as
    'gn, no plain copy'."""
    contexts = make_contexts(gpus)

    def built(norm):
        return build_step(network, norm, batch_size, data_shape, num_classes, num_groups,
                          backend, contexts, ws_backend=ws_backend)[0]
    steps_of = {norm: built(norm) for norm in norms}
    if without_plain_copy:
        native.PLAIN_COPY = False
        try:
            steps_of['gn, no plain copy'] = step = built('gn')
            step()  # the graph is traced on the first call: with the switch off
        finally:
            native.PLAIN_COPY = True
    return profile_steps(steps_of, steps, warmup, log, rounds)


def profile_steps(steps_of, steps=3, warmup=2, log=None, rounds=2):
    """{name: {'step_ms', 'rows': {row: [count, ms]}, 'reorders': {kind: [count, ms]},
    'ops': {op: [count, ms]}, 'process': {PROCESS kind: value}}}, every figure per step, for
    each training-step function of `steps_of` ({name: step}). `log` is a NativeStdoutLog
    (None: no reorder counts). After `warmup` steps of each, `rounds` blocks of `steps` steps
    are profiled, the nets taking turns so that a change in the machine's load hits all
    alike."""
    for step in steps_of.values():
        for _ in range(warmup):
            step()
        mx.nd.waitall()
    totals = {name: ({}, {}, [0.0], dict.fromkeys(PROCESS, 0.0)) for name in steps_of}
    for _ in range(rounds):
        for name, step in steps_of.items():
            ops, reorders, elapsed, process = _profiled(step, steps, log)
            _add(totals[name][0], ops)
            _add(totals[name][1], reorders)
            totals[name][2][0] += elapsed
            for kind, value in process.items():
                totals[name][3][kind] += value
    found = {}
    n = steps * rounds
    for name, (ops, reorders, (elapsed,), process) in totals.items():
        rows = {row: [0, 0.0] for row in ROWS}
        for op, (count, ms) in ops.items():
            _add(rows, {cause(op): [count, ms]})
        found[name] = {'step_ms': 1e3 * elapsed / n,
                       'rows': {k: [c / n, ms / n] for k, (c, ms) in rows.items()},
                       'reorders': {k: [c / n, ms / n] for k, (c, ms) in reorders.items()},
                       'ops': {k: [c / n, ms / n] for k, (c, ms) in ops.items()},
                       'process': {k: v / n for k, v in process.items()}}
    return found


def attribution(found, norm, baseline='none'):
    """[(cause, ms per step)] of `norm`'s excess over `baseline`, with the reorders taken out
    of the operators they run in: reorders to the default layout beyond the baseline's are the
    norm's input conversions (in MXNet's lib_api dispatcher or the native front's Reshape),
    reorders back to blocked run in the convolutions that read the norm's output. Without a oneDNN
    log (MKLDNN off) no reorder is taken out."""
    def excess(get):
        return get(found[norm]) - get(found[baseline])
    reorders = found[norm]['reorders'] and found[baseline]['reorders']
    to_default = excess(lambda f: f['reorders']['to default layout'][1]) if reorders else 0.0
    to_blocked = excess(lambda f: f['reorders']['to blocked layout'][1]) if reorders else 0.0
    front = ('norm operators', 'guards and copies')  # the native front's Reshape converts too
    rows = [('norm kernels, guards and copies, less the conversions',
             excess(lambda f: sum(f['rows'][r][1] for r in front)) - to_default),
            ('conversions to the default layout', to_default),
            ('conversions back to blocked, inside convolutions', to_blocked),
            ('convolutions, the rest', excess(lambda f: f['rows']['convolutions'][1]) - to_blocked)]
    rows += [(row, excess(lambda f, row=row: f['rows'][row][1])) for row in ROWS
             if row not in front + ('convolutions',)]
    rows.append(('outside operators (wall clock less operator time)',
                 excess(lambda f: f['step_ms'] - sum(ms for _, ms in f['rows'].values()))))
    return rows


def _markdown(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def format_report(found, baseline='none', top=12):
    """Markdown tables of `profile_norms`' result: ms per step by cause for each norm and its
    excess over `baseline` (the net without norm layers), the reorders, and the slowest ops."""
    norms = list(found)
    others = [n for n in norms if n != baseline] if baseline in found else []
    header = ['ms per step'] + norms + [f'{n} - {baseline}' for n in others]

    def with_excess(values):
        cells = [f'{v:.2f}' for v in values.values()]
        return cells + [f'{values[n] - values[baseline]:+.2f}' for n in others]

    table = [['whole step (wall clock)'] + with_excess({n: found[n]['step_ms'] for n in norms})]
    for row in ROWS:
        table.append([row] + with_excess({n: found[n]['rows'][row][1] for n in norms}))
    table.append(['all operators'] + with_excess(
        {n: sum(ms for _, ms in found[n]['rows'].values()) for n in norms}))
    parts = [_markdown(header, table)]
    if others:
        causes = {norm: dict(attribution(found, norm, baseline)) for norm in others}
        parts.append(f'excess over {baseline} by cause, ms per step:\n' + _markdown(
            ['cause'] + others, [[c] + [f'{causes[n][c]:+.2f}' for n in others]
                                 for c in causes[others[0]]]))
    if all(found[n]['reorders'] for n in norms):
        reorder_rows = []
        for kind in REORDERS:
            counts = {n: found[n]['reorders'][kind][0] for n in norms}
            times = {n: found[n]['reorders'][kind][1] for n in norms}
            reorder_rows.append([f'{kind}, count'] + [f'{v:.1f}' for v in counts.values()]
                                + [f'{counts[n] - counts[baseline]:+.1f}' for n in others])
            reorder_rows.append([f'{kind}, ms'] + with_excess(times))
        parts.append('oneDNN reorders per step (inside the operators above):\n'
                     + _markdown(['reorders'] + header[1:], reorder_rows))
    parts.append('the process per step (getrusage, all threads: first writes to fresh memory '
                 'fault, and the kernel time that costs):\n' + _markdown(
                     ['per step'] + header[1:],
                     [[kind] + with_excess({n: found[n]['process'][kind] for n in norms})
                      for kind in PROCESS]))
    shares = ws_shares(found)
    if shares:
        parts.append('weight standardization per step:\n' + _markdown(
            ['arm', 'WS operators ms', 'step ms', 'WS share of the step',
             'step - plain-conv step, ms', 'as a share of the step'],
            [[arm, f'{ws:.2f}', f'{step:.2f}', f'{ws / step:.1%}', f'{extra:+.2f}',
              f'{extra / step:+.1%}'] for arm, (ws, step, extra) in shares.items()]))
    for norm in others:
        ops = sorted(found[norm]['ops'].items(), key=lambda item: -item[1][1])[:top]
        base_ops = found[baseline]['ops']
        parts.append(f'slowest operators of the {norm} net, per step:\n' + _markdown(
            ['operator', 'count', 'ms', f'ms in {baseline}'],
            [[name, f'{count:.0f}', f'{ms:.2f}', f"{base_ops.get(name, [0, 0.0])[1]:.2f}"]
             for name, (count, ms) in ops]))
    return '\n\n'.join(parts)


def ws_shares(found):
    """{arm: (WS operators ms, step ms, step ms - the plain-conv arm's)} per step, for each
    '+ws' arm of `found` whose plain-conv arm was profiled beside it. The first counts the
    native op (forward and backward) only; the excess holds all the WS costs, layout
    conversions of the standardized weights included."""
    shares = {}
    for arm, result in found.items():
        plain = arm[:-len(WS_SUFFIX)]
        if arm.endswith(WS_SUFFIX) and plain in found:
            shares[arm] = (result['rows']['weight standardization'][1], result['step_ms'],
                           result['step_ms'] - found[plain]['step_ms'])
    return shares


def environment_for_profiling():
    """The variables a profiling process needs before MXNet builds its first graph."""
    return dict(_UNBULKED, **_VERBOSE)


UNBULKED = tuple(_UNBULKED)
