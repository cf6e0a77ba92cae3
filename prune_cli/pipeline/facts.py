"""What the plans of the loops read of a dataset: its shape and statistics, and its split sizes.

A run takes them from the loaded dataset; the dry run can also give a torchvision set's standard sizes when
its files are missing, so the plan is computed by the same functions either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from prune_cli.data.splits import batch_count


@dataclass
class DataFacts:
    info: object                 # data.splits.DataInfo (or anything with its fields)
    train_size: int
    test_size: int
    val_size: Optional[int] = None

    @classmethod
    def of(cls, dataset) -> "DataFacts":
        return cls(dataset.info, len(dataset.train), len(dataset.test),
                   len(dataset.val) if dataset.val is not None else None)

    def train_batches(self, batch_size: int) -> int:
        return batch_count(self.train_size, batch_size)
