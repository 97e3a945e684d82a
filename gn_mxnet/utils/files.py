"""Crash-safe files: every write goes to a temporary file in the same folder, is flushed to disk,
and then atomically replaces the target, so a kill at any moment leaves either the old complete
file or the new complete file, never a truncated one.
"""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path to write; on success it replaces `path` atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path, payload: bytes):
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(payload)


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode('utf-8'))
