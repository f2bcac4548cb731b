"""The failures the worker expects, as one tree: each says what it costs.

- :class:`ItemError`: one work item (an archive, a participant, an insight) failed; it is
  recorded as that item's failure (retried after a backoff, parked after ``max_attempts``)
  and the job goes on with the next one. API errors, bad records, failed verifications and
  a store's refusal of one archive are of this branch.
- :class:`JobStop`: no item is to blame; the job stops for this pass and charges no item a
  try (the state file locked by another process, TE's token budget spent or its
  credentials refused, an archive store that cannot be reached or written, or cannot keep
  archives as configured). A stop wins over an item's failure: a class of both branches
  (rejected credentials are an API error too) stops the job.

Anything else raised inside an item is a bug: it costs that item, logged with where in the
code it was raised (jobs.item_failures).
"""

from __future__ import annotations


class SyncError(Exception):
    """A failure the worker expects and names."""


class ItemError(SyncError):
    """One work item failed: recorded as its failure; the others go on."""


class JobStop(SyncError):
    """The job cannot go on this pass, whichever item it takes: it stops, none is charged."""
