"""PNG figures: matplotlib without a display, saved atomically."""
from .files import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, title='', dpi=100):
    """Writes fig as a PNG atomically (a kill mid-write keeps the old file) and closes it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=dpi)
    pyplot().close(fig)
    return path
