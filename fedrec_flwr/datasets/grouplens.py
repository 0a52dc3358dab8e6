"""Every MovieLens release: lazy, checksum-verified download and loaders.

A release is read from a directory the caller names, or downloaded once from
GroupLens into ``$FEDREC_FLWR_HOME/data/<name>`` (nothing happens at import).
Archives are checked against the md5 pinned in :data:`RELEASES`; the two
releases GroupLens regenerates in place (``ml-latest-small``) or that were not
pinned here (``ml-32m``) are checked against the ``.md5`` file GroupLens
publishes beside the archive, and the digest verified is recorded in the
cache's ``SOURCE.json``. ML-100K keeps its own fetcher (with the PyPI fallback),
:func:`~fedrec_flwr.datasets.movielens._fetch_ml100k`.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..paths import data_home, staged
from . import movielens
from ._errors import DataFileError
from ._frame import (
    IdTypes,
    bytes_with_tabs,
    concat_interactions,
    header_names,
    id_type_of,
    interactions_from_text,
    iter_text_chunks,
    read_text_table,
    side_table_from_text,
)
from .loaded import LoadedData
from .movielens import _download  # a name here, so tests can replace the network
from .validation import ValidationReport, apply_duplicate_policy

__all__ = ["RELEASES", "MovieLensRelease", "fetch_movielens", "load_movielens"]

_BASE = "https://files.grouplens.org/datasets/movielens/"
_SOURCE_FILE = "SOURCE.json"


@dataclass(frozen=True)
class MovieLensRelease:
    """Where a MovieLens release lives and how its files are laid out.

    Attributes
    ----------
    name : str
        Dataset key, e.g. ``ml-1m``.
    url : str
        GroupLens archive.
    md5 : str or None
        Pinned md5 of the archive; ``None``: verified against ``url + ".md5"``.
    folder : str
        Folder inside the archive.
    ratings, items : str
        Ratings and movies file names.
    users : str or None
        Users file (demographics: 100K and 1M only).
    layout : str
        ``100k`` (tab/pipe files), ``dat`` (``::``-separated, latin-1) or
        ``csv`` (headed CSV, UTF-8).
    rating_range : tuple of float
        Valid rating scale.
    """

    name: str
    url: str
    md5: str | None
    folder: str
    ratings: str
    items: str
    users: str | None
    layout: str
    rating_range: tuple[float, float]


def _csv_release(name: str, md5: str | None) -> MovieLensRelease:
    return MovieLensRelease(
        name, f"{_BASE}{name}.zip", md5, name, "ratings.csv", "movies.csv", None, "csv", (0.5, 5.0)
    )


RELEASES: dict[str, MovieLensRelease] = {
    "ml-100k": MovieLensRelease(
        "ml-100k",
        movielens.ML100K_URL,
        movielens.ML100K_MD5,
        "ml-100k",
        "u.data",
        "u.item",
        "u.user",
        "100k",
        (1.0, 5.0),
    ),
    "ml-1m": MovieLensRelease(
        "ml-1m",
        f"{_BASE}ml-1m.zip",
        "c4d9eecfca2ab87c1945afe126590906",
        "ml-1m",
        "ratings.dat",
        "movies.dat",
        "users.dat",
        "dat",
        (1.0, 5.0),
    ),
    "ml-10m": MovieLensRelease(
        "ml-10m",
        f"{_BASE}ml-10m.zip",
        "ce571fd55effeba0271552578f2648bd",
        "ml-10M100K",
        "ratings.dat",
        "movies.dat",
        None,
        "dat",
        (0.5, 5.0),
    ),
    "ml-20m": _csv_release("ml-20m", "cd245b17a1ae2cc31bb14903e1204af3"),
    "ml-25m": _csv_release("ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-32m": _csv_release("ml-32m", None),
    "ml-latest-small": _csv_release("ml-latest-small", None),
}

# ML-1M users.dat occupation codes (GroupLens README).
ML1M_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)


def _release(name: str) -> MovieLensRelease:
    if name not in RELEASES:
        raise ValueError(f"dataset={name!r}: unknown; accepted: {', '.join(RELEASES)}")
    return RELEASES[name]


def _expected_md5(release: MovieLensRelease, work: Path, timeout: float) -> str:
    if release.md5 is not None:
        return release.md5
    published = work / "archive.md5"
    _download(release.url + ".md5", published, timeout)
    # GroupLens writes either "MD5 (x.zip) = <hex>" or "<hex>  x.zip".
    words = published.read_text().split()
    digest = next((w.lower() for w in words if len(w) == 32 and _is_hex(w)), None)
    if digest is None:
        raise DataFileError(f"{release.url}.md5: no md5 digest found in {words[:6]}")
    return digest


def _is_hex(word: str) -> bool:
    try:
        int(word, 16)
    except ValueError:
        return False
    return True


def fetch_movielens(
    name: str, cache_dir: str | Path | None = None, *, timeout: float = 60.0
) -> Path:
    """Return a directory holding a verified MovieLens release, downloading once.

    Parameters
    ----------
    name : str
        A key of :data:`RELEASES`.
    cache_dir : str or pathlib.Path, optional (default: None)
        Where to keep the files; ``$FEDREC_FLWR_HOME/data/<name>`` if ``None``.
    timeout : float (default: 60.0)
        Network timeout in seconds.

    Returns
    -------
    pathlib.Path
        The directory; its ``SOURCE.json`` records the URL and verified md5.

    Raises
    ------
    DataFileError
        If the archive fails its checksum or lacks an expected file.
    """
    if name == "ml-100k":
        return movielens._fetch_ml100k(cache_dir)
    release = _release(name)
    target = Path(cache_dir) if cache_dir is not None else data_home() / name
    if (target / _SOURCE_FILE).is_file():
        return target
    # Concurrent fetchers may race: the first copy published wins.
    with (
        tempfile.TemporaryDirectory(dir=movielens._parent(target)) as work_dir,
        staged(target, directory=True, keep_existing=movielens._fetched) as out,
    ):
        work = Path(work_dir)
        archive = work / f"{name}.zip"
        _download(release.url, archive, timeout)
        expected = _expected_md5(release, work, timeout)
        movielens._check_digest(archive, "md5", expected, release.url)
        members = [release.ratings, release.items] + ([release.users] if release.users else [])
        with zipfile.ZipFile(archive) as zf:
            for member in members:
                try:
                    data = zf.read(f"{release.folder}/{member}")
                except KeyError:
                    raise DataFileError(
                        f"{archive}: no {release.folder}/{member} inside; the release "
                        "layout changed, pass data-dir pointing at extracted files"
                    ) from None
                (out / member).write_bytes(data)
        source = {"source": release.url, "md5": expected}
        (out / _SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return target


def _folder(release: MovieLensRelease, directory: Path) -> Path:
    if not directory.is_dir():
        raise DataFileError(
            f"data-dir {directory}: not a directory; point it at the extracted "
            f"{release.name} folder (holding {release.ratings})"
        )
    for folder in (directory, directory / release.folder):
        if (folder / release.ratings).is_file():
            return folder
    raise DataFileError(
        f"data-dir {directory}: no {release.ratings} found (nor in {release.folder}/); "
        f"{release.name} ships {release.ratings} and {release.items}"
    )


def load_movielens(
    name: str,
    data_dir: str | Path | None = None,
    *,
    lenient: bool = False,
    duplicates: str = "keep-latest",
    chunksize: int | None = 2_000_000,
) -> LoadedData:
    """Load a MovieLens release with its user and movie tables.

    Parameters
    ----------
    name : str
        A key of :data:`RELEASES` (``ml-100k``, ``ml-1m``, ``ml-10m``,
        ``ml-20m``, ``ml-25m``, ``ml-32m``, ``ml-latest-small``).
    data_dir : str or pathlib.Path, optional (default: None)
        Directory with the release's files (or its zip folder); ``None`` or
        ``""`` downloads into the cache (:func:`fetch_movielens`).
    lenient : bool (default: False)
        Drop and count bad rows instead of raising on the first.
    duplicates : str (default: "keep-latest")
        Policy for repeated ``(user, item)`` pairs.
    chunksize : int, optional (default: 2,000,000)
        Rows parsed at a time for the CSV releases.

    Returns
    -------
    LoadedData
        Users carry ``age``, ``gender``, ``occupation``, ``zip`` (100K, 1M);
        items carry ``title`` and ``genres``.
    """
    release = _release(name)
    if data_dir is None or str(data_dir) == "":
        data_dir = fetch_movielens(name)
    directory = Path(data_dir)
    if name == "ml-100k":
        folder = movielens._ml100k_folder(directory)
        ratings = folder / ("u.data" if (folder / "u.data").is_file() else "ml-100k.inter")
        report = ValidationReport(str(ratings))
        frame = movielens._read_ml100k_dir(
            directory, lenient=lenient, report=report, with_lines=True
        )
        users, items = movielens._read_ml100k_side_tables(
            directory,
            lenient=lenient,
            report=report,
            user_type=id_type_of(frame["user"]),
            item_type=id_type_of(frame["item"]),
        )
    else:
        folder = _folder(release, directory)
        ratings = folder / release.ratings
        report = ValidationReport(str(ratings))
        if release.layout == "dat":
            frame = _read_dat_ratings(ratings, release, lenient, report)
        else:
            frame = _read_csv_ratings(ratings, release, lenient, report, chunksize)
        items = _read_movies(folder / release.items, release, lenient, report)
        users = _read_ml1m_users(folder / release.users, lenient, report) if release.users else None
    frame = apply_duplicate_policy(frame, duplicates, report=report, source=str(ratings))
    return LoadedData(frame, users, items, report, name=name)


def _ratings_frame(parts: list[pd.DataFrame], path: Path, report: ValidationReport) -> pd.DataFrame:
    frame = concat_interactions(parts) if parts else None
    if frame is None or len(frame) == 0:
        detail = f" ({report.summary()})" if report.rows_read else ""
        raise DataFileError(f"{path}: no interactions found{detail}")
    return frame


def _read_dat_ratings(
    path: Path, release: MovieLensRelease, lenient: bool, report: ValidationReport
) -> pd.DataFrame:
    names = ["user", "item", "rating", "timestamp"]
    parts = []
    id_types = IdTypes.of("int", "MovieLens ids are integers")
    for raw, lines in iter_text_chunks(
        bytes_with_tabs(path, b"::"),
        names,
        path=path,
        encoding="latin-1",
        lenient=lenient,
        report=report,
        chunksize=2_000_000,
    ):
        parts.append(
            interactions_from_text(
                {c: raw[c] for c in names},
                path=path,
                lines=lines,
                rating_range=release.rating_range,
                lenient=lenient,
                report=report,
                allow_empty=True,
                with_lines=True,
                id_types=id_types,
            )
        )
    return _ratings_frame(parts, path, report)


def _read_csv_ratings(
    path: Path,
    release: MovieLensRelease,
    lenient: bool,
    report: ValidationReport,
    chunksize: int | None,
) -> pd.DataFrame:
    header = header_names(path, ",")
    wanted = {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "timestamp"}
    missing = [h for h in wanted if h not in header]
    if missing:
        raise DataFileError(
            f"{path}:1: header lacks {', '.join(missing)}; found {', '.join(header)}; "
            "MovieLens ratings.csv starts with 'userId,movieId,rating,timestamp'"
        )
    parts = []
    id_types = IdTypes.of("int", "MovieLens ids are integers")
    for raw, lines in iter_text_chunks(
        path,
        header,
        path=path,
        sep=",",
        skiprows=1,
        lenient=lenient,
        report=report,
        chunksize=chunksize,
    ):
        parts.append(
            interactions_from_text(
                {ours: raw[theirs] for theirs, ours in wanted.items()},
                path=path,
                lines=lines,
                rating_range=release.rating_range,
                lenient=lenient,
                report=report,
                allow_empty=True,
                with_lines=True,
                id_types=id_types,
            )
        )
    return _ratings_frame(parts, path, report)


def _side_table(
    source: Path | io.BytesIO,
    path: Path,
    names: list[str],
    key: str,
    lenient: bool,
    report: ValidationReport,
    **read: Any,
) -> pd.DataFrame:
    """A movies or users table keyed by integer ids (counted in ``report``)."""
    side = report.side_table(str(path))
    raw, lines = read_text_table(source, names, path=path, lenient=lenient, report=side, **read)
    return side_table_from_text(
        raw,
        key,
        path=path,
        lines=lines,
        label=key,
        id_type="int",
        reason="MovieLens ids are integers",
        lenient=lenient,
        report=side,
    )


def _read_movies(
    path: Path, release: MovieLensRelease, lenient: bool, report: ValidationReport
) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    names = ["item", "title", "genres"]
    if release.layout == "dat":
        raw = _side_table(
            bytes_with_tabs(path, b"::"), path, names, "item", lenient, report, encoding="latin-1"
        )
    else:
        raw = _side_table(
            path, path, names, "item", lenient, report, sep=",", skiprows=1, quoted=True
        )
    # "(no genres listed)" is MovieLens' spelling of no genre.
    raw["genres"] = raw["genres"].fillna("").replace("(no genres listed)", "")
    return raw


def _read_ml1m_users(path: Path, lenient: bool, report: ValidationReport) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    names = ["user", "gender", "age", "occupation", "zip"]
    raw = _side_table(
        bytes_with_tabs(path, b"::"), path, names, "user", lenient, report, encoding="latin-1"
    )
    raw["age"] = pd.to_numeric(raw["age"], errors="coerce")
    codes = pd.to_numeric(raw["occupation"], errors="coerce")
    known = codes.between(0, len(ML1M_OCCUPATIONS) - 1)
    raw["occupation"] = [
        ML1M_OCCUPATIONS[int(c)] if ok else str(v)
        for c, ok, v in zip(codes, known, raw["occupation"], strict=True)
    ]
    return raw[["user", "age", "gender", "occupation", "zip"]]
