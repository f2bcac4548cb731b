-- The schema of a state file made by 0.1.0 at commit 83b05af (2026-11-23), before schema versions:
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
   "next_attempt_at" REAL
);
CREATE INDEX "idx_archives_state_next_attempt_at"
    ON "archives" ("state", "next_attempt_at");
CREATE INDEX "idx_archives_conference_id"
    ON "archives" ("conference_id");
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
CREATE TABLE "rate_events" (
   "bucket" TEXT NOT NULL,
   "at" REAL NOT NULL
);
CREATE INDEX "idx_rate_events_bucket_at"
    ON "rate_events" ("bucket", "at");
