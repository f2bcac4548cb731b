"""Total Expert: its endpoints (client), every request kept inside its limits (session: the
token, the budgets, retries), and what its answers hold (shapes). The names the rest of the
worker uses are these."""

from sync_worker.adapters.totalexpert.client import (
    FILTER_IGNORED,
    FILTER_REJECTED,
    FILTER_SUPPORTED,
    UPDATED_SINCE_FILTER,
    TotalExpertClient,
)
from sync_worker.adapters.totalexpert.session import (
    SERVICE,
    Access,
    CredentialsRejected,
    TokenBudgetExhausted,
    TotalExpertSession,
)
from sync_worker.adapters.totalexpert.shapes import Contact, InsightSearch, User

__all__ = [
    "FILTER_IGNORED",
    "FILTER_REJECTED",
    "FILTER_SUPPORTED",
    "SERVICE",
    "UPDATED_SINCE_FILTER",
    "Access",
    "Contact",
    "CredentialsRejected",
    "InsightSearch",
    "TokenBudgetExhausted",
    "TotalExpertClient",
    "TotalExpertSession",
    "User",
]
