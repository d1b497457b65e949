"""PCA fitted on training features (paper Eq. 3, Table 20), no scikit-learn.

The top components come from an exact SVD of the centred training matrix
(``torch.linalg.svd``; fine up to tens of thousands of rows × a few thousand dims)
or ``torch.pca_lowrank`` for large matrices. Signs are fixed (largest-magnitude
loading of each component positive) so a refit gives the same basis. No whitening.
Saved as two ``.npy`` files (mean, components) next to the features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segfungi.infra.storage import load_array, write_array_atomic


class PCA:
    def __init__(self, mean: np.ndarray, components: np.ndarray):
        self.mean = np.asarray(mean, np.float32)
        self.components = np.asarray(components, np.float32)  # d×F

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, features, dim: int, seed: int = 0, exact_below: int = 20_000_000) -> "PCA":
        x = torch.as_tensor(np.asarray(features), dtype=torch.float64 if features.shape[1] <= 4096 else torch.float32)
        n, f = x.shape
        d = int(min(dim, n, f))
        mean = x.mean(dim=0)
        xc = x - mean
        if n * f <= exact_below:
            _, _, vh = torch.linalg.svd(xc, full_matrices=False)
            comps = vh[:d]
        else:
            torch.manual_seed(seed)  # pca_lowrank draws from the global generator
            _, _, v = torch.pca_lowrank(xc, q=min(d + 10, n, f), center=False, niter=4)
            comps = v[:, :d].T
        idx = comps.abs().argmax(dim=1)
        signs = torch.sign(comps[torch.arange(d), idx])
        signs[signs == 0] = 1
        comps = comps * signs[:, None]
        return cls(mean.float().numpy(), comps.float().numpy())

    def transform(self, features) -> np.ndarray:
        x = np.asarray(features, np.float32)
        return (x - self.mean) @ self.components.T

    def save(self, directory: Path, prefix: str) -> dict:
        directory = Path(directory)
        files = {"mean": f"{prefix}_pca_mean.npy", "components": f"{prefix}_pca_components.npy"}
        write_array_atomic(directory / files["mean"], self.mean)
        write_array_atomic(directory / files["components"], self.components)
        return files

    @classmethod
    def load(cls, directory: Path, files: dict) -> "PCA":
        directory = Path(directory)
        return cls(
            load_array(directory / files["mean"]),
            load_array(directory / files["components"]),
        )
