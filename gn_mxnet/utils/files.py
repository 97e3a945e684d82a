"""Crash-safe files: every write goes to a temporary file in the same folder, is flushed to disk,
and then atomically replaces the target, so a kill at any moment leaves either the old complete
file or the new complete file, never a truncated one. A kill leaves the temporary file behind,
named `.<name>.gn-mxnet-<12 hex digits>.tmp`: the mark no user's file has, so the cleanup
(`remove_stale_temporaries`, at the start of the next run in the same out-dir) can never take
a file the project did not write.

Folders the project creates for itself (a study's scratch folder) carry a mark file too
(`make_own_folder`); only a folder with its mark is ever removed, and only when empty.
"""
import contextlib
import os
import re
import secrets

TEMPORARY_MARK = 'gn-mxnet'
_TOKEN_BYTES = 6
_TEMPORARY = re.compile(r'^\.(?P<name>.+)\.%s-[0-9a-f]{%d}\.tmp$'
                        % (re.escape(TEMPORARY_MARK), 2 * _TOKEN_BYTES))


def temporary_of(name):
    """The name `name` would have in `_TEMPORARY`'s form, or None: the file it is a temporary of."""
    match = _TEMPORARY.match(name)
    return match.group('name') if match else None


def _create_temporary(folder, name):
    """A new empty `.<name>.gn-mxnet-<random>.tmp` in `folder`, with the permissions open()
    would give.

    os.open applies the process umask to 0o666 itself, so nothing reads or changes the umask
    (os.umask is process-wide: a read-and-restore races with other threads creating files).
    O_EXCL: never reuse a file another writer created.
    """
    for _ in range(100):
        token = secrets.token_hex(_TOKEN_BYTES)
        tmp = os.path.join(folder, f'.{name}.{TEMPORARY_MARK}-{token}.tmp')
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


def remove_stale_temporaries(folder, names):
    """Deletes the temporaries that killed writes of the files `names` left in `folder` (only
    files with the atomic writer's mark); returns their names.

    Only for a folder no other process is writing to (a run's own out-dir at its start)."""
    if not os.path.isdir(folder):
        return []
    names = set(names)
    stale = sorted(n for n in os.listdir(folder) if temporary_of(n) in names
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


FOLDER_MARK = '.gn-mxnet-folder'


def make_own_folder(path, purpose):
    """Creates `path` with a mark file saying the project made it (for `purpose`), or accepts
    it when it has that mark already. A folder without the mark is someone else's: it raises
    FileExistsError and the caller never writes into it or removes it."""
    mark = os.path.join(path, FOLDER_MARK)
    if os.path.lexists(path) and not os.path.isfile(mark):
        raise FileExistsError(f"{path} exists and was not made by gn-mxnet (it is the name of "
                              f"the {purpose}); move it away or choose another output folder")
    os.makedirs(path, exist_ok=True)
    if not os.path.isfile(mark):
        atomic_write_text(mark, f'made by gn-mxnet: {purpose}\n')
    return path


def remove_own_folder(path):
    """Removes a folder `make_own_folder` made, once nothing but its mark is left in it
    (anything else put there stays, and so does the folder); returns whether it went."""
    mark = os.path.join(path, FOLDER_MARK)
    if not os.path.isfile(mark) or set(os.listdir(path)) != {FOLDER_MARK}:
        return False
    os.remove(mark)
    os.rmdir(path)
    return True
