"""The one CSV schema of predictions, safe to open in a spreadsheet, written as rows are done.

``scripts/predict.py`` and the Space's batch download write the same columns, from
:func:`csv_columns` and :func:`csv_record`::

    path, predicted, prob_<class>..., refused, warning, error

``refused`` holds the reason when the input is not a frontal chest film (no class then),
``warning`` what the user should know about an answered film, ``error`` why a file could not be
read. There is no per-row disclaimer column: an archive CSV has millions of rows, and the
statement is printed by ``predict.py`` and shown next to the Space's download instead.

**CSV injection** (OWASP): a spreadsheet runs a cell that begins with ``=``, ``+``, ``-``, ``@``,
tab or carriage return as a formula, and file names come from users (an upload called
``=HYPERLINK(...).png``). :func:`safe_cell` prefixes such cells with a single quote. Cells that
already begin with a quote get one too, so that :func:`restore_cell` can undo it exactly: resuming
a run reads the ``path`` column back and must get the original names.

**Streaming**: :class:`PartWriter` appends each row to a part file and flushes it, so a crash or
Ctrl-C leaves a valid CSV of everything finished; :func:`merge_csvs` turns part files into the
final output with one atomic rename.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

# A spreadsheet treats cells starting with these as formulas (OWASP "CSV Injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"
FIXED_TAIL = ("refused", "warning", "error")


def csv_columns(classes: Sequence[str]) -> list[str]:
    """``path, predicted, prob_<class>..., refused, warning, error``."""
    return ["path", "predicted", *(f"prob_{c}" for c in classes), *FIXED_TAIL]


def safe_cell(value: Any) -> str:
    """The cell text, with a leading single quote when a spreadsheet would run it as a formula
    (or when it already starts with a quote, so that :func:`restore_cell` is exact)."""
    text = "" if value is None else str(value)
    if text.startswith((*FORMULA_PREFIXES, _QUOTE)):
        return _QUOTE + text
    return text


def restore_cell(cell: str) -> str:
    """Undo :func:`safe_cell`."""
    return cell[1:] if cell.startswith(_QUOTE) else cell


def csv_record(
    path: str,
    predicted: str | None,
    probs: Mapping[str, float] | None,
    classes: Sequence[str],
    *,
    refused: str | None = None,
    warning: str | None = None,
    error: str | None = None,
) -> list[str]:
    """One row of :func:`csv_columns`. Probabilities get 10 significant digits (rows sum to 1 within
    1e-9); they are empty when the file could not be read."""
    probs = probs or {}
    prob_cells = [format(float(probs[c]), ".10g") if c in probs else "" for c in classes]
    return [
        safe_cell(path),
        safe_cell(predicted),
        *prob_cells,
        safe_cell(refused),
        safe_cell(warning),
        safe_cell(error),
    ]


def row_record(row: Any, classes: Sequence[str]) -> list[str]:
    """:func:`csv_record` of a :class:`hfxray.inference.PredictionRow`."""
    return csv_record(
        row.path,
        row.predicted,
        row.probs if row.ok else None,
        classes,
        refused=getattr(row, "refused", None),
        warning=row.warning,
        error=row.error,
    )


def _check_header(header: Sequence[str] | None, classes: Sequence[str], path: Path) -> None:
    expected = csv_columns(classes)
    if header is None:
        raise ValueError(f"{path} is empty; delete it or pass --overwrite")
    if list(header) != expected:
        raise ValueError(
            f"{path} has columns {','.join(header)}, not this model's {','.join(expected)}; "
            "use another --output or pass --overwrite"
        )


def read_records(path: str | os.PathLike, classes: Sequence[str]) -> Iterator[list[str]]:
    """The complete rows of a predictions CSV (as written, cells still neutralised). A last row cut
    short by a crash (fewer cells than columns) is skipped; a header of other columns is an error."""
    path = Path(path)
    width = len(csv_columns(classes))
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        _check_header(next(reader, None), classes, path)
        try:
            for record in reader:
                if len(record) == width:
                    yield record
        except csv.Error:  # an unterminated quoted cell: the half-written last row of a killed run
            return


def read_done_paths(paths: Iterable[str | os.PathLike], classes: Sequence[str]) -> set[str]:
    """The ``path`` values (restored) of every complete row in the given CSVs that exist."""
    done: set[str] = set()
    for p in paths:
        if Path(p).is_file():
            done.update(restore_cell(r[0]) for r in read_records(p, classes))
    return done


@contextlib.contextmanager
def atomic_csv(output: str | os.PathLike, *, overwrite: bool) -> Iterator[Any]:
    """A csv.writer on a temporary file next to ``output``, renamed over it on success only; never
    replaces an existing file unless ``overwrite``."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; choose another --output or pass --overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            yield csv.writer(f)
        if output.exists() and not overwrite:  # appeared while we were writing: still don't clobber it
            raise FileExistsError(f"{output} already exists; choose another --output or pass --overwrite")
        os.replace(tmp_name, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_csv(
    rows: Iterable[Any], classes: Sequence[str], output: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """All ``rows`` (PredictionRow) at once, atomically."""
    with atomic_csv(output, overwrite=overwrite) as writer:
        writer.writerow(csv_columns(classes))
        for row in rows:
            writer.writerow(row_record(row, classes))
    return Path(output)


def merge_csvs(
    sources: Sequence[str | os.PathLike],
    classes: Sequence[str],
    output: str | os.PathLike,
    *,
    overwrite: bool,
) -> int:
    """Concatenate the complete rows of ``sources`` (missing ones skipped) into ``output`` atomically,
    each path once (the first row wins); returns the number of rows. ``output`` may be a source."""
    seen: set[str] = set()
    with atomic_csv(output, overwrite=overwrite) as writer:
        writer.writerow(csv_columns(classes))
        for source in sources:
            if not Path(source).is_file():
                continue
            for record in read_records(source, classes):
                if record[0] not in seen:
                    seen.add(record[0])
                    writer.writerow(record)
    return len(seen)


class PartWriter:
    """Appends rows to a part file, flushed after each batch of rows, so that whatever happens the
    file is a valid CSV of the finished rows (a killed process can at worst cut the last row, which
    readers skip). Opening with ``resume=True`` keeps the complete rows already there."""

    def __init__(self, path: str | os.PathLike, classes: Sequence[str], *, resume: bool) -> None:
        self.path = Path(path)
        self.classes = list(classes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.is_file():
            # rewrite the complete rows (atomically): drops a row that a kill cut in half
            merge_csvs([self.path], self.classes, self.path, overwrite=True)
            self._file: IO[str] = self.path.open("a", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
        else:
            self._file = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(csv_columns(self.classes))
            self._file.flush()

    def write(self, rows: Iterable[Any]) -> None:
        """Write PredictionRows and flush them to the operating system."""
        for row in rows:
            self._writer.writerow(row_record(row, self.classes))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
