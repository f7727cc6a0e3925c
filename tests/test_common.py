"""scikit-learn's common estimator checks on ReptileRegressor.

A model that was never meta-fitted must behave as a plain regressor; the checks
run on the default estimator.  No check is expected to fail.
"""

import functools
import os
import pickle
import subprocess
import sys
from pathlib import Path

from sklearn.utils.estimator_checks import parametrize_with_checks

import skreptile
from skreptile import ReptileRegressor

# Checks that cannot pass, each with its reason.  The goal, met so far: none.
EXPECTED_FAILED_CHECKS = {}


def _check_name(check):
    while isinstance(check, functools.partial):
        check = check.func
    return check.__name__


def _run_with_scipy_array_api(estimator, check):
    """Run ``check`` in a fresh interpreter started with ``SCIPY_ARRAY_API=1``.

    scikit-learn skips its array API check unless that variable was set before
    scipy was imported; setting it for the whole test session would change
    scipy for every other test.
    """
    package_root = str(Path(skreptile.__file__).resolve().parents[1])
    env = dict(os.environ, SCIPY_ARRAY_API="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    code = "import pickle, sys; estimator, check = pickle.load(sys.stdin.buffer); check(estimator)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps((estimator, check)),
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]


# The default device on purpose: the checks are of the estimator users get.
# They call fit, predict and score only, which device="auto" runs on the CPU
# whatever the host (skreptile._engine.placement), so their float tolerances
# (check_methods_subset_invariance: 1e-7) hold on a host with CUDA too, where
# a regressor sent there differed by 1.8e-7 (issue 21).  Forcing "cpu" here
# would hide a regression of that policy.
@parametrize_with_checks(
    [ReptileRegressor()],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_common_checks(estimator, check):
    if _check_name(check) == "check_array_api_input" and not os.environ.get("SCIPY_ARRAY_API"):
        _run_with_scipy_array_api(estimator, check)
    else:
        check(estimator)
