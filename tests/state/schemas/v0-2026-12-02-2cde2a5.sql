-- The schema of a state file made by 0.1.0 at commit 2cde2a5 (2026-12-02), before schema versions:
-- user_version 0. Dumped from a new file that commit's open_database made.
CREATE TABLE "archives" (
   "archive_id" TEXT PRIMARY KEY,
   "conference_id" TEXT NOT NULL,
   "state" TEXT NOT NULL,
   "remote_status" TEXT,
   "sha256" TEXT,
   "record" TEXT,
   "path" TEXT,
   "size" INTEGER,
   "first_seen_at" REAL,
   "stored_at" REAL,
   "claimed_at" REAL,
   "attempts" INTEGER NOT NULL DEFAULT 0,
   "last_error" TEXT,
   "next_attempt_at" REAL,
   "first_seen_status" TEXT
);
CREATE INDEX "idx_archives_state_next_attempt_at"
    ON "archives" ("state", "next_attempt_at");
CREATE INDEX "idx_archives_conference_id"
    ON "archives" ("conference_id");
CREATE INDEX "idx_archives_first_seen_at_archive_id"
    ON "archives" ("first_seen_at", "archive_id");
CREATE TABLE "participants" (
   "archive_id" TEXT REFERENCES "archives"("archive_id"),
   "email" TEXT,
   "name" TEXT,
   "moderator_email" TEXT,
   "state" TEXT NOT NULL,
   "attempts" INTEGER NOT NULL DEFAULT 0,
   "last_error" TEXT,
   "next_attempt_at" REAL,
   PRIMARY KEY ("archive_id", "email")
);
CREATE INDEX "idx_participants_state_next_attempt_at"
    ON "participants" ("state", "next_attempt_at");
CREATE TABLE "insights" (
   "archive_id" TEXT REFERENCES "archives"("archive_id"),
   "contact_id" INTEGER,
   "owner_id" INTEGER,
   "email" TEXT,
   "state" TEXT NOT NULL,
   "te_insight_id" INTEGER,
   "sent_at" REAL,
   "attempts" INTEGER NOT NULL DEFAULT 0,
   "last_error" TEXT,
   "next_attempt_at" REAL,
   PRIMARY KEY ("archive_id", "contact_id")
);
CREATE INDEX "idx_insights_state_next_attempt_at"
    ON "insights" ("state", "next_attempt_at");
CREATE TABLE "tokens" (
   "key" TEXT PRIMARY KEY,
   "access_token" TEXT,
   "expires_at" REAL,
   "obtained_at" REAL
);
CREATE TABLE "token_leases" (
   "key" TEXT PRIMARY KEY,
   "holder" TEXT,
   "until" REAL
);
CREATE TABLE "rate_events" (
   "bucket" TEXT NOT NULL,
   "at" REAL NOT NULL
);
CREATE INDEX "idx_rate_events_bucket_at"
    ON "rate_events" ("bucket", "at");
CREATE TABLE "rate_counts" (
   "bucket" TEXT PRIMARY KEY,
   "used" INTEGER
);
CREATE TABLE "durable_marks" (
   "id" INTEGER PRIMARY KEY,
   "at" REAL
);
CREATE TABLE "te_meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
);
CREATE TABLE "te_contacts" (
   "contact_id" INTEGER PRIMARY KEY,
   "email" TEXT,
   "owner_id" INTEGER,
   "seen_at" REAL
);
CREATE INDEX "idx_te_contacts_email"
    ON "te_contacts" ("email");
CREATE TABLE "te_users" (
   "user_id" INTEGER PRIMARY KEY,
   "email" TEXT,
   "seen_at" REAL
);
CREATE INDEX "idx_te_users_email"
    ON "te_users" ("email");
CREATE TABLE "te_lookups" (
   "email" TEXT,
   "kind" TEXT,
   "looked_up_at" REAL,
   PRIMARY KEY ("email", "kind")
);
CREATE INDEX "idx_te_lookups_kind_looked_up_at"
    ON "te_lookups" ("kind", "looked_up_at");
CREATE TABLE "capabilities" (
   "name" TEXT PRIMARY KEY,
   "value" TEXT,
   "decided_at" REAL
);
CREATE TABLE "job_runs" (
   "job" TEXT PRIMARY KEY,
   "last_finished_at" REAL,
   "last_duration" REAL,
   "last_ok_at" REAL,
   "runs" INTEGER,
   "failed_runs" INTEGER
);
CREATE TABLE "totals" (
   "name" TEXT PRIMARY KEY,
   "value" INTEGER
);
CREATE TABLE "held_records" (
   "key" TEXT PRIMARY KEY,
   "conference_id" TEXT,
   "kind" TEXT NOT NULL,
   "reason" TEXT NOT NULL,
   "listing" TEXT NOT NULL,
   "first_seen_at" REAL,
   "last_seen_at" REAL
);
CREATE INDEX "idx_held_records_conference_id"
    ON "held_records" ("conference_id");
CREATE TABLE "webhook_secrets" (
   "secret" TEXT PRIMARY KEY,
   "subscription_id" TEXT,
   "registered_at" REAL NOT NULL,
   "pending" INTEGER NOT NULL,
   "retired_at" REAL
);
CREATE TABLE "insight_blocks" (
   "id" INTEGER PRIMARY KEY,
   "kind" TEXT NOT NULL,
   "reason" TEXT NOT NULL,
   "since" REAL NOT NULL,
   "retry_at" REAL,
   "client" TEXT
);
CREATE TABLE "state_identity" (
   "id" INTEGER PRIMARY KEY,
   "state_id" TEXT NOT NULL
);
CREATE TABLE "audits" (
   "archive_id" TEXT PRIMARY KEY REFERENCES "archives"("archive_id"),
   "audited_at" REAL NOT NULL,
   "result" TEXT,
   "detail" TEXT
);
CREATE INDEX "idx_audits_audited_at"
    ON "audits" ("audited_at");
CREATE TABLE "passes" (
   "id" INTEGER PRIMARY KEY,
   "started_at" REAL NOT NULL,
   "finished_at" REAL,
   "outcome" TEXT,
   "tenant" TEXT,
   "jobs" TEXT NOT NULL,
   "counts" TEXT,
   "errors" TEXT,
   "bytes_stored" INTEGER,
   "te_requests" INTEGER,
   "te_tokens_requested" INTEGER
);
CREATE INDEX "idx_passes_started_at"
    ON "passes" ("started_at");
