"""Progress bars for long loops (tqdm), switched off by one flag for tests and worker pools."""


def progress(iterable, enabled=True, **kwargs):
    """`iterable` wrapped in a tqdm bar when `enabled`; tqdm's keyword arguments pass through."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, dynamic_ncols=True, **kwargs)
