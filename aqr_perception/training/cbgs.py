"""Class-balanced grouping and sampling (CBGS; Zhu et al. 2019), as CMT trains on nuScenes
(mmdet3d's ``CBGSDataset``): the samples are repeated so that each class present gets
about the same share of an epoch.

Each sample is listed once per class it contains; class c, found in n_c of those
listings (share f_c = n_c / sum n), is drawn n_c * (1 / K) / f_c times with replacement
(K the number of classes present), so every class ends up with about sum(n) / K draws.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


def cbgs_indices(sample_labels: list[np.ndarray], rng: np.random.Generator) -> list[int]:
    """Indices into the samples, CBGS-resampled; ``sample_labels[i]``: the GT labels of sample i."""
    by_class: dict[int, list[int]] = {}
    for i, labels in enumerate(sample_labels):
        for c in sorted(set(int(v) for v in labels)):
            by_class.setdefault(c, []).append(i)
    if not by_class:                          # no GT anywhere: nothing to balance
        return list(range(len(sample_labels)))
    total = sum(len(v) for v in by_class.values())
    share = 1.0 / len(by_class)
    out: list[int] = []
    for c in sorted(by_class):
        members = by_class[c]
        ratio = share / (len(members) / total)
        out += rng.choice(members, int(len(members) * ratio)).tolist()
    return out


class CbgsDataset(Dataset):
    """A view of ``dataset`` (samples with ``.labels``) in CBGS order, drawn once with ``seed``."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset = dataset
        self.indices = cbgs_indices([s.labels for s in dataset.samples], np.random.default_rng(seed))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]
