"""CSV tables: the one writer (atomic, whole file each time) and reader every log and study uses."""
import csv
import io

from .files import atomic_write_text


def write_csv(path, rows, columns, fill_missing=False):
    """Writes `rows` (dicts) under the header `columns`, replacing `path` atomically. Jobs
    rewrite their whole table after each row, so a resumed job's file has no duplicate rows.
    A row lacking a column is an error unless `fill_missing` (then the cell stays empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, '') if fill_missing else row[key]
                         for key in columns})
    atomic_write_text(path, buffer.getvalue())
    return path


def read_csv(path):
    """The rows of a CSV file as dicts of strings."""
    with open(path, newline='') as f:
        return list(csv.DictReader(f))
