"""`RunError`: a run that cannot go on (its directory is in use, no intact checkpoint, disk full, too many
images failing to load, a loss that is never finite). The message says what happened and what to do;
`fastprod train` prints it as one line and exits 1 instead of showing a traceback or reporting success."""

from __future__ import annotations


class RunError(RuntimeError):
    """A training run stopped on purpose; the message names the directory, file or setting involved."""
