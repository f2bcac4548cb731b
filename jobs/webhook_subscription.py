"""The webhook job: keep this tenant subscribed to Flexperto's "archive available"
webhook at a secret path, rotated every ``webhook.rotate_days``.

Each secret is written down (state.webhooks) before it is registered; once Flexperto
accepts it, the older ones are retired, still accepted for GRACE_SECONDS, then their
subscriptions are deleted. The webhook only hastens the archive job: when registering
fails, the job logs ``webhook.register_failed`` and polling goes on as before.
"""

from __future__ import annotations

import secrets

import structlog

from sync_worker.adapters.flexperto.client import ListingForm
from sync_worker.adapters.http import ApiError
from sync_worker.config import Config
from sync_worker.core import logs
from sync_worker.jobs.context import JobContext, Outcome
from sync_worker.state import capabilities, webhooks
from sync_worker.state.configured import open_state_read_only, state_exists
from sync_worker.state.db import NoState, has_table

GRACE_SECONDS = 3600.0  # Flexperto retries a delivery for under a second; ample margin
DAY = 86400.0

log = structlog.get_logger()


def run(ctx: JobContext) -> None:
    settings = ctx.config.webhook
    if not settings.listen:
        return
    now = ctx.clock.now()
    for secret in webhooks.accepted(ctx.db, now, GRACE_SECONDS):
        logs.add_secret(secret)  # in URLs of error messages, say
    _use_listing_prefix(ctx)
    current = webhooks.current(ctx.db)
    if current is None or now - current.registered_at >= settings.rotate_days * DAY:
        _register(ctx, now, rotating=current is not None)
    _remove_expired(ctx, now)


def _use_listing_prefix(ctx: JobContext) -> None:
    """Address Flexperto where the archive job found its API (the prefix may differ)."""
    decision = capabilities.get(ctx.db, capabilities.LISTING_FORM)
    form = ListingForm.from_text(decision.value) if decision else None
    if form is not None:
        ctx.flexperto.use(form)


def _register(ctx: JobContext, now: float, rotating: bool) -> None:
    secret = secrets.token_urlsafe(32)
    logs.add_secret(secret)
    webhooks.prepare(ctx.db, secret, now)
    settings = ctx.config.webhook
    try:
        subscription_id = ctx.flexperto.subscribe_webhook(
            f"{settings.public_url}/{secret}", settings.topic
        )
    except ApiError as exc:
        # It may have been registered all the same (a timeout): accept it for a while.
        webhooks.retire(ctx.db, secret, now)
        log.warning("webhook.register_failed", error=str(exc), status=exc.status)
        ctx.stats.add(Outcome.FAILED)
        return
    webhooks.confirm(ctx.db, secret, subscription_id, now)
    log.info("webhook.registered", subscription_id=subscription_id, rotated=rotating)


def _remove_expired(ctx: JobContext, now: float) -> None:
    for old in webhooks.expired(ctx.db, now, GRACE_SECONDS):
        if old.subscription_id is None:
            log.warning("webhook.unsubscribe_unknown", registered_at=old.registered_at)
        else:
            try:
                ctx.flexperto.unsubscribe_webhook(old.subscription_id)
                log.info("webhook.unsubscribed", subscription_id=old.subscription_id)
            except ApiError as exc:
                log.warning(
                    "webhook.unsubscribe_failed",
                    subscription_id=old.subscription_id,
                    error=str(exc),
                    status=exc.status,
                )
        webhooks.forget(ctx.db, old.secret)


def accepted_secrets(config: Config, now: float) -> list[str]:
    """The secret paths a delivery for this tenant may carry now, from its state file
    (none before the first run)."""
    if not state_exists(config.state):
        return []
    try:
        db = open_state_read_only(config.state)
    except NoState:
        return []
    try:
        if not has_table(db, "webhook_secrets"):
            return []
        return webhooks.accepted(db, now, GRACE_SECONDS)
    finally:
        db.close()
