"""Another commit's checkout beside this one, for benchmarks that compare the two."""

import contextlib
import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def other_checkout(commit):
    """A temporary git worktree of ``commit``, removed afterwards; yields its path."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "other")
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "--detach", "-q", path, commit], check=True
        )
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], check=True)
