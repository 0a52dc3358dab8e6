"""MovieLens-100K: lazy, checksum-verified download and readers.

Sources, tried in order when no local directory is given:

1. GroupLens ``ml-100k.zip`` (md5 ``0e33842e24a9c977be4e0107933c0723``), whose
   ``u.data`` holds the 100,000 ratings.
2. The same ratings as RecBole atomic files inside the ``recbole==1.2.1`` wheel,
   fetched with ``pip download --no-deps`` (sha256-checked). This is the fallback
   for machines that reach a package index but not GroupLens.

Nothing is downloaded at import time; :func:`_fetch_ml100k` (reached through
:func:`~fedrec_flwr.datasets.fetch_movielens`) runs only when called.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..paths import data_home, staged
from ..progress import progress
from ._errors import DataFileError
from ._frame import (
    INTERACTION_COLUMNS,
    IdTypes,
    interactions_from_text,
    iter_text_chunks,
    read_text_table,
    side_table_from_text,
)
from .atomic import read_atomic_inter, read_atomic_table
from .validation import ValidationReport

__all__ = [
    "ML100K_GENRES",
    "ML100K_MD5",
    "ML100K_URL",
    "RECBOLE_WHEEL_SHA256",
    "RECBOLE_WHEEL_SPEC",
    "read_u_data",
]

logger = logging.getLogger(__name__)

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
RECBOLE_WHEEL_SPEC = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_WHEEL_MEMBERS = tuple(
    f"recbole/dataset_example/ml-100k/ml-100k.{ext}" for ext in ("inter", "user", "item")
)
_ZIP_MEMBERS = ("ml-100k/u.data", "ml-100k/u.user", "ml-100k/u.item")
_RATING_RANGE = (1.0, 5.0)
# Order of the genre flags in u.item (GroupLens README).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_SOURCE_FILE = "SOURCE.json"


def read_u_data(
    path: str | Path,
    *,
    lenient: bool = False,
    report: ValidationReport | None = None,
    with_lines: bool = False,
) -> pd.DataFrame:
    """Read GroupLens ``u.data`` (tab-separated user, item, rating, timestamp).

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    lenient : bool (default: False)
        Drop bad rows (counted in ``report``) instead of raising.
    report : ValidationReport, optional (default: None)
        Receives rows read and dropped per kind.
    with_lines : bool (default: False)
        Keep a ``line`` column with each row's file line.
    """
    path = Path(path)
    raw, lines = next(
        iter_text_chunks(
            path, ["user", "item", "rating", "timestamp"], path=path, lenient=lenient, report=report
        ),
        (pd.DataFrame({c: pd.Series(dtype=str) for c in INTERACTION_COLUMNS}), np.arange(0)),
    )
    columns = {c: raw[c] for c in raw.columns}
    return interactions_from_text(
        columns,
        path=path,
        lines=lines,
        rating_range=_RATING_RANGE,
        lenient=lenient,
        report=report,
        with_lines=with_lines,
        id_types=IdTypes.of("int", "u.data ids are integers"),
    )


def _ml100k_folder(directory: Path) -> Path:
    if not directory.is_dir():
        raise DataFileError(
            f"data-dir {directory}: not a directory; point it at a folder holding "
            "u.data (GroupLens) or ml-100k.inter (RecBole atomic files)"
        )
    for folder in (directory, directory / "ml-100k"):
        if (folder / "u.data").is_file() or (folder / "ml-100k.inter").is_file():
            return folder
    raise DataFileError(
        f"data-dir {directory}: found neither u.data nor ml-100k.inter; accepted: "
        "GroupLens ml-100k (u.data) or RecBole atomic files (ml-100k.inter)"
    )


def _read_ml100k_dir(
    directory: str | Path,
    *,
    lenient: bool = False,
    report: ValidationReport | None = None,
    with_lines: bool = False,
) -> pd.DataFrame:
    """Read ML-100K from a directory holding ``u.data`` or ``ml-100k.inter``.

    The GroupLens zip's ``ml-100k/`` sub-folder is looked into as well.
    ``lenient``, ``report`` and ``with_lines`` are as in :func:`read_u_data`.
    """
    folder = _ml100k_folder(Path(directory))
    if (folder / "u.data").is_file():
        return read_u_data(folder / "u.data", lenient=lenient, report=report, with_lines=with_lines)
    return read_atomic_inter(
        folder / "ml-100k.inter",
        rating_range=_RATING_RANGE,
        lenient=lenient,
        report=report,
        with_lines=with_lines,
    )


def _read_ml100k_side_tables(
    directory: str | Path,
    *,
    lenient: bool = False,
    report: ValidationReport | None = None,
    user_type: str = "int",
    item_type: str = "int",
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Read ML-100K's users and items (``u.user``/``u.item`` or RecBole
    ``ml-100k.user``/``ml-100k.item``), ``None`` for a table that is absent.

    Parameters
    ----------
    directory : str or pathlib.Path
        As in :func:`_read_ml100k_dir`.
    lenient : bool (default: False)
        Drop rows whose id is missing or not of the interactions' type
        (counted in a side-table report of ``report``) instead of raising.
    report : ValidationReport, optional (default: None)
        The interactions' report; each table read adds its own to
        ``report.side_tables``.
    user_type, item_type : str (default: "int")
        The interactions' id types (``int`` or ``str``), which keys must match.

    Returns
    -------
    tuple of pandas.DataFrame or None
        Users with ``user``, ``age`` (int), ``gender``, ``occupation``, ``zip``;
        items with ``item``, ``title``, ``genres`` (``|``-joined).
    """
    folder = _ml100k_folder(Path(directory))
    users = items = None

    def side(path: Path) -> ValidationReport | None:
        return report.side_table(str(path)) if report is not None else None

    if (folder / "u.user").is_file():
        users = _read_pipe_table(
            folder / "u.user",
            ["user", "age", "gender", "occupation", "zip"],
            lenient=lenient,
            report=side(folder / "u.user"),
        )
    elif (folder / "ml-100k.user").is_file():
        path = folder / "ml-100k.user"
        users = read_atomic_table(
            path, "user_id", id_type=user_type, lenient=lenient, report=side(path)
        )
    if users is not None:
        users["age"] = pd.to_numeric(users["age"], errors="coerce")
    if (folder / "u.item").is_file():
        names = ["item", "title", "release", "video", "url", *ML100K_GENRES]
        raw = _read_pipe_table(
            folder / "u.item", names, lenient=lenient, report=side(folder / "u.item")
        )
        flags = raw[list(ML100K_GENRES)].to_numpy() == "1"
        genres = [
            "|".join(g for g, f in zip(ML100K_GENRES, row, strict=True) if f) for row in flags
        ]
        # The release year, as RecBole's copy of the same file has it (release_year).
        released = pd.to_datetime(raw["release"], format="%d-%b-%Y", errors="coerce")
        items = pd.DataFrame(
            {
                "item": raw["item"],
                "title": raw["title"],
                "release_year": released.dt.year.astype("Int64").astype(str).replace("<NA>", ""),
                "genres": genres,
            }
        )
    elif (folder / "ml-100k.item").is_file():
        path = folder / "ml-100k.item"
        items = read_atomic_table(
            path, "item_id", id_type=item_type, lenient=lenient, report=side(path)
        )
    return users, items


def _read_pipe_table(
    path: Path, names: list[str], *, lenient: bool, report: ValidationReport | None
) -> pd.DataFrame:
    """A GroupLens ``|``-separated latin-1 table keyed by integer ids."""
    raw, lines = read_text_table(
        path, names, path=path, sep="|", encoding="latin-1", lenient=lenient, report=report
    )
    return side_table_from_text(
        raw,
        names[0],
        path=path,
        lines=lines,
        label=names[0],
        id_type="int",
        reason="GroupLens ids are integers",
        lenient=lenient,
        report=report,
    )


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_digest(path: Path, algorithm: str, expected: str, source: str) -> None:
    actual = _digest(path, algorithm)
    if actual != expected:
        raise DataFileError(
            f"{path}: {algorithm} {actual} does not match the expected {expected} for "
            f"{source}; the download is corrupt or the release changed. Delete it and "
            "retry, or pass data-dir pointing at a verified copy"
        )


def _download(url: str, dest: Path, timeout: float) -> None:
    """Fetch ``url`` into ``dest``, showing progress (a bar on a terminal)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as fh:
        size = response.headers.get("Content-Length")
        blocks = iter(lambda: response.read(1 << 20), b"")
        total = int(size) if size and size.isdigit() else None
        for block in progress(
            blocks, f"downloading {dest.name}", total=total, step=len, unit="bytes"
        ):
            fh.write(block)


def _download_grouplens(workdir: Path, url: str, timeout: float) -> Path:
    archive = workdir / "ml-100k.zip"
    _download(url, archive, timeout)
    return archive


def _extract_grouplens(archive: Path, target: Path) -> None:
    _check_digest(archive, "md5", ML100K_MD5, ML100K_URL)
    with zipfile.ZipFile(archive) as zf:
        for member in _ZIP_MEMBERS:
            (target / Path(member).name).write_bytes(zf.read(member))


def _download_recbole_wheel(workdir: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(workdir),
        RECBOLE_WHEEL_SPEC,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(workdir.glob("recbole-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise DataFileError(
            f"could not fetch {RECBOLE_WHEEL_SPEC} with pip download "
            f"(exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
        )
    return wheels[0]


def _extract_recbole_wheel(wheel: Path, target: Path) -> None:
    _check_digest(wheel, "sha256", RECBOLE_WHEEL_SHA256, RECBOLE_WHEEL_SPEC)
    with zipfile.ZipFile(wheel) as zf:
        for member in _WHEEL_MEMBERS:
            (target / Path(member).name).write_bytes(zf.read(member))


def _parent(target: Path) -> Path:
    """``target``'s folder, created: downloads are staged beside the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def _fetched(existing: Path) -> bool:
    """Whether a folder published first by another fetcher is a finished copy."""
    return (existing / _SOURCE_FILE).is_file()


def _fetch_ml100k(
    cache_dir: str | Path | None = None,
    *,
    url: str = ML100K_URL,
    timeout: float = 30.0,
) -> Path:
    """Return a directory holding verified ML-100K files, downloading once.

    Parameters
    ----------
    cache_dir : str or pathlib.Path, optional (default: None)
        Where to keep the files; ``$FEDREC_FLWR_HOME/data/ml-100k`` if ``None``.
    url : str (default: GroupLens ml-100k.zip)
        Primary source; its md5 must equal :data:`ML100K_MD5`.
    timeout : float (default: 30.0)
        Network timeout in seconds for the primary source.

    Returns
    -------
    pathlib.Path
        The cache directory. A ``SOURCE.json`` in it records where the data came
        from and the checksum that was verified.

    Raises
    ------
    DataFileError
        If a download fails its checksum, or neither source can be reached.
    """
    target = Path(cache_dir) if cache_dir is not None else data_home() / "ml-100k"
    if (target / _SOURCE_FILE).is_file():
        return target
    # Concurrent client processes may race to fetch: the first copy published wins.
    with (
        tempfile.TemporaryDirectory(dir=_parent(target)) as work_dir,
        staged(target, directory=True, keep_existing=_fetched) as out,
    ):
        work = Path(work_dir)
        try:
            archive = _download_grouplens(work, url, timeout)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            logger.warning(
                "GroupLens unreachable (%s); falling back to %s",
                exc,
                RECBOLE_WHEEL_SPEC,
            )
            wheel = _download_recbole_wheel(work)
            _extract_recbole_wheel(wheel, out)
            source = {"source": RECBOLE_WHEEL_SPEC, "sha256": RECBOLE_WHEEL_SHA256}
        else:
            _extract_grouplens(archive, out)
            source = {"source": url, "md5": ML100K_MD5}
        (out / _SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    logger.info("ML-100K cached in %s", target)
    return target
