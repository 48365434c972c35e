"""The engines' own words for a lease: the statuses they read, and what a run did with each lease."""

from __future__ import annotations

import enum


class LeaseStatus(enum.StrEnum):
    """`leases.status`, as the application sets it. Rent bills active leases; any other value is an error."""

    DRAFT = "draft"
    ACTIVE = "active"
    TERMINATED = "terminated"
    ENDED = "ended"


class LeaseOutcome(enum.StrEnum):
    """What a run did with one lease (the `outcome` of the engines' staging tables, the preview's)."""

    CREATED = "created"
    UPDATED = "updated"
    # A rent draft that already held what the run computed: not rewritten, only linked to the run.
    UNCHANGED = "unchanged"
    # The lease's invoice is no longer a draft (issued, paid or void): not touched.
    SKIPPED = "skipped"
    FAILED = "failed"


# Every outcome bound under its own name, as the engines' SQL reads them (:created, :skipped…).
OUTCOME_BINDS = {outcome.value: outcome.value for outcome in LeaseOutcome}
