"""Three-class (CSF/GM/WM) tissue probability maps for T1w volumes without given maps.

Method: a 3-component Gaussian mixture on the intensities inside the mask
(scikit-learn's ``GaussianMixture``, full EM, fixed seed), fitted on a random
subsample of at most 200,000 voxels for speed; the per-voxel posterior
probabilities are the partial-volume maps, components ordered by mean intensity
as CSF < GM < WM (T1w contrast). Outside the mask all three maps are 0.
This is the intensity model behind FSL FAST without its Markov random field:
maps are noisier at tissue borders, which is acceptable for simulation.
"""

from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture

MAX_FIT_VOXELS = 200_000


def gmm_tissue_maps(data: np.ndarray, mask: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Posterior CSF/GM/WM probabilities (float32, same shape as ``data``) inside ``mask``."""
    values = data[mask].astype(np.float64).reshape(-1, 1)
    rng = np.random.default_rng(seed)
    fit_on = values if len(values) <= MAX_FIT_VOXELS else values[rng.choice(len(values), MAX_FIT_VOXELS, replace=False)]
    lo, hi = np.percentile(fit_on, [10, 90])
    gmm = GaussianMixture(
        n_components=3,
        means_init=np.linspace(lo, hi, 3).reshape(-1, 1),  # dark-to-bright start: CSF, GM, WM
        random_state=seed,
        max_iter=200,
    ).fit(fit_on)
    order = np.argsort(gmm.means_.ravel())
    posteriors = gmm.predict_proba(values)[:, order]
    maps = {}
    for name, column in zip(("csf", "gm", "wm"), posteriors.T):
        full = np.zeros(data.shape, dtype=np.float32)
        full[mask] = column
        maps[name] = full
    return maps
