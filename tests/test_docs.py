"""The documentation site (mkdocs.yml, docs/) builds in strict mode and says what it must.

- `mkdocs build --strict` passes: a broken link between pages, a broken anchor, a page missing
  from the nav or a nav entry without its page is a warning, and strict turns it into a failure.
- The fixed pages exist and the nav lists exactly them.
- Links from a page to a repo file outside docs/ (../results/..., ../train/...) are not mkdocs'
  to check (mkdocs_hooks.py silences its reports of them): here each must exist in the checkout.
- Every public name (gn_mxnet's __all__ and each entry point's) is in the generated API page.
"""
import ast
import html
import importlib.util
import os
import re
import subprocess
import sys

import markdown
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, 'docs')
CONFIG = os.path.join(REPO, 'mkdocs.yml')

# The site's pages, in nav order (docs/index.md is the home page).
PAGES = ('index.md', 'install.md', 'user_guide.md', 'models.md', 'onnx_amp.md', 'training.md',
         'multi_machine.md', 'detection.md', 'reproduction.md', 'benchmarks.md', 'gpu.md',
         'design.md', 'history.md', 'api.md')

# Entry points whose __all__ the API page documents: gn_mxnet/*.py and the models package.
ENTRY_POINTS = sorted(['gn_mxnet.' + name[:-3]
                       for name in os.listdir(os.path.join(REPO, 'gn_mxnet'))
                       if name.endswith('.py') and not name.startswith('_')]
                      + ['gn_mxnet.models'])
# Python-Markdown with the site's block extensions (mkdocs.yml), so code blocks are code here too.
MARKDOWN_EXTENSIONS = ['admonition', 'attr_list', 'tables', 'pymdownx.superfences']

_LINK = re.compile(r'\b(?:href|src)="([^"]*)"')
_ID = re.compile(r'\bid="([^"]+)"')


def load_hooks():
    spec = importlib.util.spec_from_file_location('mkdocs_hooks',
                                                  os.path.join(REPO, 'mkdocs_hooks.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages():
    with open(CONFIG) as f:
        config = yaml.safe_load(f)   # mkdocs.yml holds no !python tags

    def walk(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            if isinstance(value, list):
                yield from walk(value)
            else:
                yield value
    return list(walk(config['nav']))


def doc_pages():
    return sorted(os.path.relpath(os.path.join(root, name), DOCS).replace(os.sep, '/')
                  for root, _, names in os.walk(DOCS) for name in names if name.endswith('.md'))


def links(text):
    """The link and image targets of a page, as Markdown renders it (code is not a link)."""
    page = markdown.markdown(text, extensions=MARKDOWN_EXTENSIONS)
    return [html.unescape(target) for target in _LINK.findall(page)]


def public_names(module):
    """`module`'s __all__, read from its source (no import: gn_mxnet.onnx needs the extra)."""
    path = os.path.join(REPO, *module.split('.'))
    path = os.path.join(path, '__init__.py') if os.path.isdir(path) else path + '.py'
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '__all__'
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f'{path} defines no __all__: its public names are not declared')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    # Not --quiet: it drops the warnings that --strict counts. NO_MKDOCS_2_WARNING silences
    # mkdocs-material's end-of-life banner (a print, not a warning).
    env = dict(os.environ, NO_MKDOCS_2_WARNING='1')
    result = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict',
                             '--config-file', CONFIG, '--site-dir', str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return result, out


def test_site_builds_in_strict_mode(site):
    result, _ = site
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if line.startswith(('WARNING', 'ERROR'))]
    assert result.returncode == 0, (
        'mkdocs build --strict failed (pip install -e ".[docs]" installs mkdocs):\n'
        + '\n'.join(problems or output.splitlines()[-30:]))


def test_every_page_exists_and_the_nav_lists_exactly_them():
    missing = [page for page in PAGES if not os.path.isfile(os.path.join(DOCS, page))]
    assert not missing, f'pages missing from docs/: {missing}'
    assert nav_pages() == list(PAGES), 'mkdocs.yml nav is not the fixed page list'
    assert doc_pages() == sorted(PAGES), 'docs/ holds pages outside the fixed list'


def test_links_to_repo_files_outside_docs_exist():
    hooks = load_hooks()
    broken, outside_repo, checked = [], [], 0
    for page in doc_pages():
        with open(os.path.join(DOCS, page), encoding='utf-8') as f:
            targets = links(f.read())
        for link in targets:
            target = hooks.outside_docs_target(page, link)
            if target is None:
                continue   # a link between pages: the strict build checks it
            checked += 1
            if target.startswith('../'):
                outside_repo.append(f'{page}: {link}')
            elif not os.path.exists(os.path.join(REPO, target)):
                broken.append(f'{page}: {link}')
    assert not outside_repo, f'links leaving the repository: {outside_repo}'
    assert not broken, f'links to repo files that do not exist: {broken}'
    assert checked, 'no page links a repo file: is the link parser broken?'


def test_link_parser_skips_code_and_finds_both_link_kinds():
    text = ('[a](../results/a.csv) `[b](../b.py)` [c](install.md#pins "t") ![g](../g.png)\n\n'
            '```\n[d](../d.txt)\n```\n\n    [e](../e.txt)\n\n- [f][ref]\n\n'
            '[ref]: ../train/f.py\n')
    assert links(text) == ['../results/a.csv', 'install.md#pins', '../g.png', '../train/f.py']


def public_paths():
    """Where each public name is documented: gn_mxnet's own names under the module that
    defines them (the package resolves them lazily), the entry points' names under theirs."""
    import gn_mxnet   # cheap: imports nothing until a name is used
    paths = []
    for name in gn_mxnet.__all__:
        if name in gn_mxnet._NAMES:
            paths.append(f'gn_mxnet.{gn_mxnet._NAMES[name]}.{name}')
        else:
            assert f'gn_mxnet.{name}' in ENTRY_POINTS, f'gn_mxnet.{name} has no API section'
    for module in ENTRY_POINTS:
        paths += [f'{module}.{name}' for name in public_names(module)]
    return paths


def test_every_public_name_is_in_the_api_reference(site):
    result, out = site
    if result.returncode != 0:
        pytest.fail('the site did not build: see test_site_builds_in_strict_mode')
    with open(os.path.join(out, 'api.html'), encoding='utf-8') as f:
        anchors = set(_ID.findall(f.read()))
    missing = [path for path in public_paths() if path not in anchors]
    assert not missing, f'public names missing from docs/api.md (a `::: module` block): {missing}'


def test_every_public_name_has_a_docstring():
    # What the API page shows, read as mkdocstrings reads it (griffe, statically). A `:::` block
    # naming an object renders it even without a docstring, so this is checked here.
    import griffe
    package = griffe.load('gn_mxnet', search_paths=[REPO], resolve_aliases=True,
                          resolve_external=False)
    bare = []
    for path in public_paths():
        obj = package[path[len('gn_mxnet.'):]]
        obj = obj.final_target if obj.is_alias else obj
        if obj.docstring is None or not obj.docstring.value.strip():
            bare.append(f'{path} (defined in {obj.path})')
    assert not bare, f'public names without a docstring: {bare}'
