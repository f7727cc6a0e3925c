"""The command-line arguments sphinx-gallery gives every example (``reset_argv`` in conf.py).

``--quick`` (a short run of each example) unless ``SKREPTILE_DOCS_FULL`` is set, in which
case the examples run in full.  A module of its own: Sphinx pickles its configuration, so
the callable is named by its import path.
"""

import os


def example_arguments(gallery_conf, script_vars):
    """``["--quick"]``, or no arguments when ``SKREPTILE_DOCS_FULL`` is set."""
    return [] if os.environ.get("SKREPTILE_DOCS_FULL") else ["--quick"]
