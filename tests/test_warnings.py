"""The pytest configuration (pyproject.toml, [tool.pytest.ini_options] filterwarnings) hides the
known deprecation warnings of MXNet, gluoncv and what they import, each filter named by its
module or message, so that a warning raised from gn_mxnet, tests or scripts still shows."""
import warnings

import pytest
from _pytest.config import parse_warning_filter

pytest_plugins = ['pytester']

# Where a warning of ours is attributed: the package, a test, a script.
OURS = ['gn_mxnet.training.loop', 'gn_mxnet', 'test_train', 'train_imagenet', '__main__']
# The known warnings the filters hide (category, message, module it is attributed to).
KNOWN = [(DeprecationWarning, '`np.bool` is a deprecated alias for the builtin `bool`.',
          'mxnet.numpy.utils'),
         (DeprecationWarning, 'Please import `csr_matrix` from the `scipy.sparse` namespace; '
                              'the `scipy.sparse.csr` namespace is deprecated',
          'mxnet.ndarray.utils'),
         (DeprecationWarning, 'distutils Version classes are deprecated. Use packaging.version '
                              'instead.', 'gluoncv.check'),
         (DeprecationWarning, '`np.float` is a deprecated alias for the builtin `float`.',
          'gluoncv.model_zoo.rcnn.rpn.anchor'),
         (UserWarning, 'Parameter normalizedperclassboxcenterencoder2_stds, '
                       'normalizedperclassboxcenterencoder2_means is not used by any '
                       'computation. Is this intended?', 'mxnet.gluon.block')]


def filters(config):
    return config.getini('filterwarnings')


def caught(config, category, message, module):
    """Whether pytest's filters (applied as pytest applies them) let this warning through."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        for entry in filters(config):
            warnings.filterwarnings(*parse_warning_filter(entry, escape=False))
        warnings.warn_explicit(message, category, f'{module.replace(".", "/")}.py', 1,
                               module=module, registry={})
    return bool(seen)


def test_every_filter_is_specific(request):
    """No filter hides a whole category: each ignore names a module or a message, never ours."""
    assert filters(request.config)
    for entry in filters(request.config):
        action, message, category, module, _ = parse_warning_filter(entry, escape=False)
        if action != 'ignore':
            continue
        assert message or module, f"{entry!r} hides every {category.__name__}"
        assert 'gn_mxnet' not in entry and 'gn_' not in module, entry


@pytest.mark.parametrize('module', OURS)
@pytest.mark.parametrize('category', [DeprecationWarning, UserWarning, RuntimeWarning,
                                      FutureWarning, PendingDeprecationWarning])
def test_our_warnings_still_show(request, module, category):
    assert caught(request.config, category, 'a warning of ours', module)
    for _, message, _ in KNOWN:   # even one worded as a known one
        assert caught(request.config, category, message, module)


@pytest.mark.parametrize('category, message, module', KNOWN)
def test_known_deprecations_are_hidden(request, category, message, module):
    assert not caught(request.config, category, message, module)


def test_pytest_itself_reports_ours_and_hides_theirs(request, pytester):
    """A run of pytest with this configuration: the gn_mxnet warning is in its summary, the
    MXNet one is not."""
    pytester.makeini('[pytest]\nfilterwarnings =\n' + ''.join(
        f'    {entry}\n' for entry in filters(request.config)))
    pytester.makepyfile(test_emits='''
        import warnings

        def test_emits():
            for module in ('gn_mxnet.training.loop', 'mxnet.numpy.utils'):
                warnings.warn_explicit('deprecated in ' + module, DeprecationWarning,
                                       module.replace('.', '/') + '.py', 1, module=module)
    ''')
    result = pytester.runpytest('-p', 'no:cacheprovider')
    result.assert_outcomes(passed=1, warnings=1)
    assert 'deprecated in gn_mxnet.training.loop' in result.stdout.str()
    assert 'deprecated in mxnet' not in result.stdout.str()
