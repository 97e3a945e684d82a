"""The training-step breakdown: oneDNN log parsing, cause attribution, and one tiny real run
of `bench_train.py --breakdown` whose GN net must show the lib_api layout conversions."""
import os
import subprocess
import sys

import mxnet as mx
import pytest

from gn_mxnet.training import step_profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LOG = """dnnl_verbose,info,oneDNN v2.4.4
dnnl_verbose,exec,cpu,reorder,jit:blk,undef,src_f32::blocked:aBcd8b:f0 dst_f32::blocked:abcd:f0,,,32x16x28x28,1.5
dnnl_verbose,exec,cpu,reorder,jit:blk,undef,src_f32::blocked:abcd:f0 dst_f32::blocked:aBcd8b:f0,,,32x16x28x28,0.25
dnnl_verbose,exec,cpu,reorder,jit:uni,undef,src_f32::blocked:abcd:f0 dst_f32::blocked:ABcd8b8a:f0,,,16x16x3x3,0.125
dnnl_verbose,exec,cpu,reorder,simple:any,undef,src_f32::blocked:abcd:f0 dst_f32::blocked:abcd:f0,,,2x3,0.5
dnnl_verbose,exec,cpu,convolution,jit:avx2,forward_training,src_f32::blocked:aBcd8b:f0 wei_f32::blocked:ABcd8b8a:f0 bia_undef::undef::f0 dst_f32::blocked:aBcd8b:f0,,alg:convolution_direct,mb32,2.0
dnnl_verbose,exec,cpu,reorder,jit:blk,undef,src_f32::blocked:aBcd8b:f0 dst_f32::blocked:abcd:f0,,,8x16x4x4,0.5
"""


def test_onednn_log_counts_reorders_by_direction():
    found = step_profile.parse_onednn_log(LOG)
    assert found == {'to default layout': [2, 2.0], 'to blocked layout': [1, 0.25],
                     'weights': [1, 0.125], 'other reorders': [1, 0.5]}


@pytest.mark.parametrize('op, row', [
    ('GroupNormalization', 'norm operators'), ('_backward_GroupNormalization', 'norm operators'),
    ('BatchNorm', 'norm operators'), ('_backward_BatchNorm', 'norm operators'),
    ('WeightStandardization', 'weight standardization'),
    ('_backward_WeightStandardization', 'weight standardization'),
    ('_copy', 'guards and copies'), ('_zeros_without_dtype', 'zero gradients of unused outputs'),
    ('_backward_Convolution', 'convolutions'), ('elemwise_add', 'other operators')])
def test_each_operator_has_one_cause(op, row):
    assert step_profile.cause(op) == row


def _result(step_ms, norm_ms, conv_ms, to_default_ms, to_blocked_ms):
    rows = {row: [0, 0.0] for row in step_profile.ROWS}
    rows['norm operators'] = [2, norm_ms]
    rows['convolutions'] = [2, conv_ms]
    reorders = {kind: [0, 0.0] for kind in step_profile.REORDERS}
    reorders['to default layout'] = [1, to_default_ms]
    reorders['to blocked layout'] = [1, to_blocked_ms]
    return {'step_ms': step_ms, 'rows': rows, 'reorders': reorders, 'ops': {},
            'process': dict.fromkeys(step_profile.PROCESS, 0.0)}


def test_attribution_takes_the_reorders_out_of_their_operators():
    found = {'gn': _result(20.0, 6.0, 10.0, 4.0, 3.0), 'none': _result(10.0, 0.0, 8.0, 1.0, 0.0)}
    causes = dict(step_profile.attribution(found, 'gn'))
    assert causes['norm kernels, guards and copies, less the conversions'] == 3.0
    assert causes['conversions to the default layout'] == 3.0
    assert causes['conversions back to blocked, inside convolutions'] == 3.0
    assert causes['convolutions, the rest'] == -1.0
    # every millisecond of the excess is in exactly one cause
    assert sum(causes.values()) == pytest.approx(20.0 - 10.0)


def test_ws_share_is_the_op_over_the_step_and_the_excess_over_the_plain_conv_arm():
    found = {'gn': _result(20.0, 6.0, 10.0, 4.0, 3.0), 'gn+ws': _result(22.0, 6.0, 10.0, 4.0, 3.0),
             'none': _result(10.0, 0.0, 8.0, 1.0, 0.0)}
    found['gn+ws']['rows']['weight standardization'] = [4, 1.1]
    assert step_profile.ws_shares(found) == {'gn+ws': (1.1, 22.0, 2.0)}
    assert step_profile.ws_shares({'gn+ws': found['gn+ws']}) == {}   # no plain arm beside it
    report = step_profile.format_report(found)
    assert '| gn+ws | 1.10 | 22.00 | 5.0% | +2.00 | +9.1% |' in report


def test_breakdown_of_a_tiny_run_shows_gn_conversions(native_library):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'bench_train.py'), '--breakdown',
         '--batch-size', '2', '--steps', '1', '--rounds', '1', '--warmup', '1'],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith('CPU: ') and 'load average' in out
    rows = {line.split('|')[1].strip(): [cell.strip() for cell in line.split('|')[2:-1]]
            for line in out.splitlines() if line.startswith('| ')}
    norm_bn, norm_gn, norm_none = (float(v) for v in rows['norm operators'][:3])
    assert norm_bn > 0 and norm_gn > 0 and norm_none == 0
    if mx.runtime.Features().is_enabled('MKLDNN') and \
            os.environ.get('MXNET_MKLDNN_ENABLED', '1') != '0':
        # lib_api converts the convolutions' blocked outputs for every GN layer; BN needs none
        to_default = [float(v) for v in rows['to default layout, count'][:3]]
        assert to_default[1] > to_default[0] == to_default[2]
    # the whole process's page faults and system time per step, for each net
    for kind in step_profile.PROCESS:
        assert len(rows[kind]) == 5 and all(float(v) >= 0 for v in rows[kind][:3]), rows[kind]
