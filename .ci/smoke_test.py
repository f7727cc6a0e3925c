"""Smoke test of an installed skreptile (the wheel), run from outside the checkout.

Checks that the package imports from site-packages with only its declared
dependencies, ships ``py.typed`` and the version of ``_version.py``, and that a
tiny ``meta_fit`` / ``fit`` / ``predict`` works for both estimators.
"""

import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

import skreptile
import skreptile.datasets
import skreptile.evaluation
import skreptile.nn
import skreptile.pipeline
from skreptile import ClassTaskSampler, ReptileClassifier, ReptileRegressor, SineTaskSampler

package = Path(skreptile.__file__).resolve().parent
assert "site-packages" in package.parts, f"not the installed wheel: {package}"
assert (package / "py.typed").is_file(), "py.typed is missing from the wheel"
assert skreptile.__version__ == version("skreptile"), (skreptile.__version__, version("skreptile"))

reg = ReptileRegressor(n_meta_iter=20, random_state=0, device="cpu")
reg.meta_fit(SineTaskSampler(random_state=0))
rng = np.random.default_rng(0)
X = rng.uniform(-5, 5, (10, 1))
y = 2 * np.sin(X[:, 0] + 1)
pred = reg.fit(X, y).predict(X)
assert pred.shape == (10,) and np.isfinite(pred).all()

Xc = rng.normal(size=(60, 4))
yc = np.repeat(np.arange(6), 10)
clf = ReptileClassifier(n_meta_iter=10, random_state=0, device="cpu")
clf.meta_fit(ClassTaskSampler(Xc, yc, n_way=3, k_shot=2, random_state=0))
labels = clf.fit(Xc[:6], np.arange(6) % 3).predict(Xc[6:12])
assert labels.shape == (6,)

print(
    f"smoke test passed: skreptile {skreptile.__version__} from {package} "
    f"(python {sys.version.split()[0]}); regressor and classifier meta_fit/fit/predict OK"
)
