"""Crash-safe files: every write goes to a temporary file in the same folder, is flushed to disk,
and then atomically replaces the target, so a kill at any moment leaves either the old complete
file or the new complete file, never a truncated one. A kill leaves the temporary file behind
(`.<name>.<random>.tmp`); `remove_stale_temporaries` clears them when the next run starts.
"""
import contextlib
import os
import re
import secrets

_TEMPORARY = re.compile(r'^\.(?P<name>.+)\.[0-9A-Za-z_]+\.tmp$')


def _create_temporary(folder, name):
    """A new empty `.<name>.<random>.tmp` in `folder`, with the permissions open() would give.

    os.open applies the process umask to 0o666 itself, so nothing reads or changes the umask
    (os.umask is process-wide: a read-and-restore races with other threads creating files).
    O_EXCL: never reuse a file another writer created.
    """
    for _ in range(100):
        tmp = os.path.join(folder, f'.{name}.{secrets.token_hex(6)}.tmp')
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path to write; on success it replaces `path` atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _create_temporary(folder, os.path.basename(path))
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(folder):
    """Deletes the temporary files killed writes left in `folder`; returns their names.

    Only for a folder no other process is writing to (a run's own out-dir at its start)."""
    if not os.path.isdir(folder):
        return []
    stale = sorted(n for n in os.listdir(folder) if _TEMPORARY.match(n)
                   and os.path.isfile(os.path.join(folder, n)))
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def atomic_write_bytes(path, payload: bytes):
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(payload)


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode('utf-8'))
