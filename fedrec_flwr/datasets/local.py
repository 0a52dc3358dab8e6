"""A SuperNode's own log: its users only, items encoded with the shared catalogue.

In a real deployment no process holds every user's data. Each SuperNode names
its local file and the shared item catalogue through ``--node-config``
(``data-file=... item-catalogue=...``); its users are encoded locally, its
items against the catalogue so embedding rows agree across nodes.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import DataFileError
from .cache import _local_client_data
from .catalogue import read_catalogue
from .options import DataOptions
from .prepare import ClientData, PreparedData, _load_source, _prepare_loaded

__all__ = ["load_local_client_data"]


@functools.lru_cache(maxsize=8)
def load_local_client_data(
    data_file: str,
    item_catalogue: str,
    options: DataOptions,
    partition_id: int,
    num_partitions: int,
) -> ClientData:
    """Prepare (once, cached on disk) and return a node's own data.

    Parameters
    ----------
    data_file : str
        Absolute path of the node's log: a RecBole ``.inter`` file, or a
        CSV/TSV/Parquet log read with ``options.log_columns``.
    item_catalogue : str
        Absolute path of the shared ``catalogue.txt``.
    options : DataOptions
        Preparation options (threshold, k-core, validation, duplicates, seed,
        negatives); its dataset and partitioner are not used.
    partition_id, num_partitions : int
        This node's id (salts its evaluation negatives) and the federation size.

    Raises
    ------
    DataFileError
        If a file is missing or malformed, or (strict validation) the log has
        an item outside the catalogue.
    """
    path = Path(data_file)
    catalogue_path = Path(item_catalogue)
    if not path.is_absolute() or not catalogue_path.is_absolute():
        raise DataFileError(
            f"node-config data-file={data_file!r} item-catalogue={item_catalogue!r}: both "
            "must be absolute paths (the ClientApp runs from the unpacked FAB)"
        )
    local = dataclasses.replace(
        options,
        dataset="atomic" if path.suffix == ".inter" else "log",
        data_dir=str(path),
        partitioner="random",
    )
    data = _local_client_data(
        local,
        catalogue_path,
        partition_id,
        lambda: _prepare_local(path, catalogue_path, local, partition_id),
    )
    return dataclasses.replace(data, partition_id=partition_id, num_partitions=num_partitions)


def _prepare_local(
    path: Path, catalogue_path: Path, local: DataOptions, partition_id: int
) -> tuple[PreparedData, dict[str, Any]]:
    """A node's own log prepared against the catalogue, and its cache record."""
    catalogue = read_catalogue(catalogue_path)
    loaded = _load_source(local)
    frame = loaded.interactions
    known = np.isin(frame["item"].to_numpy(), catalogue)
    if not known.all():
        if not local.lenient:
            first = frame["item"].iloc[int(np.flatnonzero(~known)[0])]
            raise DataFileError(
                f"{path}: {int((~known).sum())} rows name items outside the catalogue "
                f"{catalogue_path} (e.g. item {first!r}); use the catalogue the federation "
                "was prepared with, or set validation='lenient' to drop and count such rows"
            )
        frame = frame.loc[known].reset_index(drop=True)
        loaded = dataclasses.replace(loaded, interactions=frame)
    prepared = _prepare_loaded(loaded, local, item_catalogue=catalogue, negatives_salt=partition_id)
    record = {
        "options": local.to_dict(),
        "dataset": prepared.stats(),
        "protocol": prepared.protocol(),
        "preparation": {
            **(prepared.preparation or {}),
            "rows-outside-catalogue": int((~known).sum()),
        },
    }
    return prepared, record
