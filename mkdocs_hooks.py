"""mkdocs hook (mkdocs.yml `hooks:`): links from a page to a repo file outside docs/.

The pages link to raw results and scripts as relative paths (`../results/train_speed/`,
`../train/train_imagenet.py`), which resolve on GitHub and in a site built into <repo>/site.
They are not documentation files, so mkdocs reports each as "not found" (or, for a folder, as an
"unrecognized relative link"), and a strict build would fail on them. This hook drops exactly
those reports: the link's target lies outside docs_dir. Every other link report (a missing page,
a broken anchor) stays a warning. tests/test_docs.py checks that each outside target exists.
"""
import logging
import posixpath
import re
from urllib.parse import unquote, urlsplit

_REPORT = re.compile(r"Doc file '(?P<page>[^']+)' contains (?:a link|an unrecognized relative "
                     r"link) '(?P<link>[^']+)'")


def outside_docs_target(page, link):
    """The repo-relative target of `link` on docs page `page` when it leaves docs/, else None."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or not parts.path or parts.path.startswith('/'):
        return None
    target = posixpath.normpath(posixpath.join(posixpath.dirname(page), unquote(parts.path)))
    if not target.startswith('../'):
        return None
    return target[len('../'):]


class _OutsideDocsLinks(logging.Filter):
    def filter(self, record):
        match = _REPORT.match(record.getMessage())
        return not (match and outside_docs_target(match['page'], match['link']) is not None)


_FILTER = _OutsideDocsLinks()


def on_config(config):
    logger = logging.getLogger('mkdocs.structure.pages')
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return config
