"""Folder checks for scripts/check_data.py: counts, bad files, duplicates, leakage, quarantine."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hfxray.data.duplicates import (
    DuplicateGroup,
    _groups_from_records,
    cross_duplicates,
    file_record,
    records_from_dataset,
)
from hfxray.data.loading import BadFile, _is_hidden, load_image_folder
from hfxray.images import SUPPORTED_EXTENSIONS

logger = logging.getLogger(__name__)


QUARANTINE_DIRNAME = "quarantine"
QUARANTINE_LOG = "quarantine_log.csv"


# --------------------------------------------------------------------------------------------
# quarantine
# --------------------------------------------------------------------------------------------
def _move_no_overwrite(src: Path, dst_dir: Path) -> Path:
    """Move ``src`` into ``dst_dir`` under a name that does not exist yet; never overwrites.

    A hard link (fails if the name exists) followed by unlinking the source keeps this atomic on
    one file system; across file systems an exclusive-create copy is used before the unlink.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    stem, suffix = src.stem, src.suffix
    for n in range(10_000):
        dst = dst_dir / (src.name if n == 0 else f"{stem}-{n}{suffix}")
        try:
            os.link(src, dst)
        except FileExistsError:
            continue
        except OSError:  # cross-device or no hard links: exclusive copy
            try:
                with open(src, "rb") as fin, open(dst, "xb") as fout:
                    shutil.copyfileobj(fin, fout)
                shutil.copystat(src, dst)
            except FileExistsError:
                continue
        os.unlink(src)
        return dst
    raise FileExistsError(f"no free quarantine name for {src.name} in {dst_dir}")


def quarantine_dir(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/../quarantine``: beside the data, so imagefolder never reads it back."""
    return Path(data_dir).expanduser().resolve().parent / QUARANTINE_DIRNAME


def quarantine(bad_files: Iterable[BadFile], data_dir: str | os.PathLike) -> Path:
    """Move bad files to ``<data_dir>/../quarantine/<class>/`` and append to its CSV log.

    Never deletes and never overwrites (a clash gets ``name-1.ext``). Files that are already gone
    are logged as warnings and skipped. Returns the quarantine folder.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    qdir = quarantine_dir(data_dir)
    qdir.mkdir(parents=True, exist_ok=True)
    log_path = qdir / QUARANTINE_LOG
    new_log = not log_path.exists()
    with open(log_path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new_log:
            writer.writerow(["time", "original_path", "new_path", "reason"])
        for bad in bad_files:
            src = Path(bad.path).resolve()
            if not src.is_file():
                logger.warning("not quarantined (missing): %s", src)
                continue
            try:
                sub = src.parent.relative_to(data_dir)
            except ValueError:
                sub = Path("_outside")
            dst = _move_no_overwrite(src, qdir / sub)
            writer.writerow([datetime.now(timezone.utc).isoformat(), str(src), str(dst), bad.reason])
            f.flush()
            logger.warning("quarantined %s -> %s (%s)", src, dst, bad.reason)
    return qdir


# --------------------------------------------------------------------------------------------
# folder check (scripts/check_data.py)
# --------------------------------------------------------------------------------------------
@dataclass
class DataCheckReport:
    """Everything `scripts/check_data.py` prints: counts, bad files, duplicates, leakage."""

    data_dir: str  # the folder, or the folders' common parent when several were checked
    classes: list[str]
    counts: dict[str, int]
    bad_files: list[BadFile] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    test_dir: str | None = None
    test_files: int = 0
    cross_duplicates: list[DuplicateGroup] = field(default_factory=list)
    quarantine_dir: str | None = None
    data_dirs: list[str] = field(default_factory=list)
    confounding: dict[str, Any] | None = None  # `confounding.confounding_report`
    metadata_problems: list[str] = field(default_factory=list)  # `metadata_problems`

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("duplicates", "cross_duplicates"):
            for g, dd in zip(getattr(self, key), d[key], strict=True):
                dd["classes"] = g.classes
        return d

    def format(self) -> str:
        folders = self.data_dirs if len(self.data_dirs) > 1 else [self.data_dir]
        lines = [f"Data folder{'s' if len(folders) > 1 else ''}: {', '.join(folders)}"]
        lines.append(f"{sum(self.counts.values())} usable images:")
        lines += [f"  {c}: {self.counts.get(c, 0)}" for c in self.classes]
        lines.append(f"{len(self.bad_files)} bad file(s)" + (":" if self.bad_files else ""))
        lines += [f"  {b.path}: {b.reason}" for b in self.bad_files]
        if self.metadata_problems:
            lines.append(f"{len(self.metadata_problems)} metadata problem(s):")
            lines += [f"  {m}" for m in self.metadata_problems]
        if self.quarantine_dir:
            lines.append(f"Bad files moved to {self.quarantine_dir} (see {QUARANTINE_LOG})")
        lines += _format_groups("duplicate group(s) in the data folder", self.duplicates, self.data_dir)
        if self.test_dir is not None:
            lines.append(f"Test folder: {self.test_dir} ({self.test_files} files)")
            lines += _format_groups(
                "group(s) shared between data and test folder (leakage)",
                self.cross_duplicates,
                str(Path(self.data_dir).parent),
            )
        if self.confounding:
            from hfxray.data.confounding import format_confounding

            lines.append(format_confounding(self.confounding))
        return "\n".join(lines)

    def write_html(self, out_dir: str | os.PathLike) -> Path:
        """``out_dir/report.html``: counts, bad files, duplicates, leakage and the confounding report."""
        from hfxray import report as html_report

        sections: dict[str, Any] = {
            "Images per class": html_report.Table(
                ["class", "images"], [[c, self.counts.get(c, 0)] for c in self.classes]
            ),
            "Bad files": html_report.Table(["file", "reason"], [[b.path, b.reason] for b in self.bad_files])
            if self.bad_files
            else "No bad files.",
            "metadata.csv": "\n\n".join(self.metadata_problems) or "No problems found.",
            "Duplicates": "\n\n".join(_format_groups("duplicate group(s)", self.duplicates, self.data_dir)),
        }
        if self.test_dir is not None:
            sections["Leakage into the test folder"] = "\n\n".join(
                _format_groups(f"group(s) shared with {self.test_dir}", self.cross_duplicates, self.data_dir)
            )
        if self.confounding:
            from hfxray.data.confounding import confounding_sections

            sections.update(confounding_sections(self.confounding))
        names = ", ".join(Path(d).name for d in (self.data_dirs or [self.data_dir]))
        return html_report.write_html_report(
            out_dir, {}, {}, title=f"hfxray data check: {names}", extra_sections=sections
        )


def _format_groups(title: str, groups: Sequence[DuplicateGroup], root: str) -> list[str]:
    lines = [f"{len(groups)} {title}" + (":" if groups else "")]
    for g in groups:
        label = f" [different classes: {', '.join(g.classes)}]" if len(g.classes) > 1 else ""
        shown = [os.path.relpath(m, root) if m.startswith(root) else m for m in g.members]
        lines.append(f"  {g.kind}{label}: " + ", ".join(shown))
    return lines


def _list_image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not _is_hidden(p.name) and p.suffix.lower() in SUPPORTED_EXTENSIONS
    )


def metadata_problems(data_dir: str | os.PathLike) -> list[str]:
    """One line per inconsistency between ``metadata.csv`` and the files beside it.

    A row naming a missing file, several rows for one file (only one of them can describe it: the
    others are films that were lost, e.g. overwritten under one name) and image files without a row
    (they get the folder defaults, ``source`` = folder name) all make the provenance columns wrong
    without any error at load time.
    """
    folder = Path(data_dir).expanduser().resolve()
    table = folder / "metadata.csv"
    if not table.is_file():
        return []
    with open(table, newline="", encoding="utf-8") as fh:
        names = [(row.get("file_name") or "").strip() for row in csv.DictReader(fh)]
    problems: list[str] = []
    repeated = {n: k for n, k in Counter(names).items() if k > 1}
    if repeated:
        worst = max(repeated, key=repeated.__getitem__)
        problems.append(
            f"{table}: {sum(repeated.values()) - len(repeated)} extra row(s) repeat a file_name "
            f"({len(repeated)} name(s), e.g. {worst} x{repeated[worst]}): films lost or listed twice"
        )
    listed = {(folder / n).resolve() for n in names if n}
    missing = sorted(p for p in listed if not p.is_file())
    if missing:
        problems.append(f"{table}: {len(missing)} row(s) name files that do not exist (e.g. {missing[0]})")
    unlisted = [p for p in _list_image_files(folder) if p.resolve() not in listed]
    unlisted = [p for p in unlisted if p.parent.resolve().parent == folder]  # class folders only
    if unlisted:
        problems.append(
            f"{table}: {len(unlisted)} image file(s) have no row (e.g. {unlisted[0].relative_to(folder)}); "
            "they get the folder defaults"
        )
    return problems


def check_folder(
    data_dir: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    test_dir: str | os.PathLike | None = None,
    image_size: int = 224,
    phash_distance: int = 4,
    num_proc: int | None = None,
    move_bad_files: bool = False,
    confounding: bool = False,
) -> DataCheckReport:
    """Load one or several training folders and report counts, bad files, duplicates and leakage.

    Uses (and fills) the same `datasets` cache as training at ``image_size``. With
    ``move_bad_files`` the bad files are quarantined (moved, logged, never deleted), each beside
    its own folder. ``confounding`` adds the class x source/population tables and the
    metadata-only baseline (`hfxray.data.confounding`).
    """
    dirs = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir)
    resolved = [str(Path(d).expanduser().resolve()) for d in dirs]
    ds, bad = load_image_folder(dirs[0] if len(dirs) == 1 else dirs, image_size=image_size, num_proc=num_proc)
    classes = ds.features["label"].names
    counts = Counter(ds["label"])
    records = records_from_dataset(ds)
    report = DataCheckReport(
        data_dir=resolved[0] if len(resolved) == 1 else os.path.commonpath(resolved),
        classes=classes,
        counts={c: counts.get(i, 0) for i, c in enumerate(classes)},
        bad_files=bad,
        duplicates=_groups_from_records(records, phash_distance),
        data_dirs=resolved,
    )
    report.metadata_problems = [line for folder in resolved for line in metadata_problems(folder)]
    if confounding:
        from hfxray.data.confounding import confounding_report

        report.confounding = confounding_report(ds)
    if test_dir is not None:
        test_path = Path(test_dir).expanduser().resolve()
        if not test_path.is_dir():
            raise FileNotFoundError(f"test folder not found: {test_path}")
        test_files = _list_image_files(test_path)
        report.test_dir, report.test_files = str(test_path), len(test_files)
        test_records = [file_record(p, draft_size=image_size) for p in test_files]
        report.cross_duplicates = cross_duplicates(records, test_records, phash_distance=phash_distance)
    if move_bad_files and bad:
        moved = []
        for folder in resolved:
            mine = [b for b in bad if Path(b.path).is_relative_to(folder)]
            if mine:
                moved.append(str(quarantine(mine, folder)))
        report.quarantine_dir = ", ".join(dict.fromkeys(moved))
    return report
