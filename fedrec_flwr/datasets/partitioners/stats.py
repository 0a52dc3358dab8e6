"""Per-partition statistics: sizes, imbalance (Gini), a table and a figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...protocol import NUM_PARTITIONS_KEY
from ..negatives import sorted_unique

if TYPE_CHECKING:
    from ..prepare import PreparedData

__all__ = ["PartitionStats", "gini", "partition_stats"]


def gini(values: Any) -> float:
    """Gini coefficient of non-negative amounts: 0 = all equal, -> 1 = one holds all.

    ``sum_i (2i - n - 1) x_(i) / (n * sum x)`` over the ascending values.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


@dataclass(frozen=True)
class PartitionStats:
    """What each partition holds.

    Attributes
    ----------
    labels : list of str
        Partition names.
    users, interactions, items : numpy.ndarray
        Per partition: users, training interactions, distinct training items.
    partitioner : str
        Description of the partitioner that made it.
    """

    labels: list[str]
    users: np.ndarray
    interactions: np.ndarray
    items: np.ndarray
    partitioner: str = ""

    @property
    def gini_users(self) -> float:
        return gini(self.users)

    @property
    def gini_interactions(self) -> float:
        return gini(self.interactions)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (kebab-case keys) for JSON."""
        return {
            "partitioner": self.partitioner,
            NUM_PARTITIONS_KEY: len(self.labels),
            "gini-users": round(self.gini_users, 6),
            "gini-interactions": round(self.gini_interactions, 6),
            "partitions": [
                {"id": p, "label": lab, "users": int(u), "interactions": int(n), "items": int(i)}
                for p, (lab, u, n, i) in enumerate(
                    zip(self.labels, self.users, self.interactions, self.items, strict=True)
                )
            ],
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> PartitionStats:
        """Rebuild from :meth:`to_dict` output (e.g. a cache's ``meta.json``)."""
        parts = record["partitions"]
        return cls(
            [p["label"] for p in parts],
            np.array([p["users"] for p in parts], dtype=np.int64),
            np.array([p["interactions"] for p in parts], dtype=np.int64),
            np.array([p["items"] for p in parts], dtype=np.int64),
            record.get("partitioner", ""),
        )

    def table(self, max_rows: int = 50) -> str:
        """Fixed-width text table, largest partitions first beyond ``max_rows``."""
        width = max([5, *(len(lab) for lab in self.labels)])
        width = min(width, 30)
        lines = [
            f"{self.partitioner}: {len(self.labels)} partitions, "
            f"Gini users {self.gini_users:.3f}, interactions {self.gini_interactions:.3f}",
            f"{'id':>5}  {'label':<{width}}  {'users':>8}  {'interactions':>12}  {'items':>7}",
        ]
        order = np.arange(len(self.labels))
        if len(order) > max_rows:
            order = np.argsort(-self.interactions, kind="stable")[:max_rows]
        for p in order:
            lines.append(
                f"{p:>5}  {self.labels[p][:width]:<{width}}  {self.users[p]:>8}  "
                f"{self.interactions[p]:>12}  {self.items[p]:>7}"
            )
        if len(self.labels) > max_rows:
            lines.append(f"... {len(self.labels) - max_rows} smaller partitions not shown")
        lines.append(
            f"{'total':>5}  {'':<{width}}  {self.users.sum():>8}  {self.interactions.sum():>12}"
        )
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Draw users and interactions per partition (sorted) to an image file."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for ax, values, what, g in (
            (axes[0], self.users, "users", self.gini_users),
            (axes[1], self.interactions, "training interactions", self.gini_interactions),
        ):
            ax.bar(np.arange(len(values)), np.sort(values)[::-1], width=1.0, color="#4477aa")
            ax.set_title(f"{what} per partition (Gini {g:.3f})")
            ax.set_xlabel("partition (largest first)")
            ax.set_ylabel(what)
        fig.suptitle(self.partitioner)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def partition_stats(
    data: PreparedData, assignment: np.ndarray, labels: list[str], partitioner: str = ""
) -> PartitionStats:
    """Count users, training interactions and distinct items per partition.

    Parameters
    ----------
    data : PreparedData
        The partitioned dataset.
    assignment : numpy.ndarray
        Partition of each user code.
    labels : list of str
        One name per partition.
    partitioner : str (default: "")
        Description shown in the table and figure.
    """
    k = len(labels)
    users = np.bincount(assignment, minlength=k)
    row_part = assignment[data.train_users]
    interactions = np.bincount(row_part, minlength=k)
    pairs = sorted_unique(row_part * np.int64(max(data.num_items, 1)) + data.train_items)
    items = np.bincount(pairs // max(data.num_items, 1), minlength=k)
    return PartitionStats(list(labels), users, interactions, items, partitioner)
