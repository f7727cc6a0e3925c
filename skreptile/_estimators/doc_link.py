"""The "?" of an estimator's HTML display links to its page in the API reference.

scikit-learn's HTML representation shows a "?" linking to the documentation
of estimators whose module matches ``_doc_link_module``; these attributes point
it at skreptile's API reference instead of scikit-learn's.  The documentation's
address is ``SKREPTILE_DOCS_URL`` when set (the documentation build sets it to
a relative path, so that the links in the built pages work offline), else
:data:`DOCS_URL`.
"""

from __future__ import annotations

import os
from typing import Any

#: Where the published documentation lives (its API pages are under ``gen_modules/``).
DOCS_URL = "https://skreptile.readthedocs.io/en/stable/"


def api_page_url(estimator: Any) -> str:
    """The address of the API page of ``estimator``'s class."""
    base = os.environ.get("SKREPTILE_DOCS_URL") or DOCS_URL
    if not base.endswith("/"):
        base += "/"
    return f"{base}gen_modules/skreptile.{type(estimator).__name__}.html"


def url_params(estimator: Any) -> dict[str, str]:
    """The parameters of ``_doc_link_template`` for ``estimator``."""
    return {"url": api_page_url(estimator)}
