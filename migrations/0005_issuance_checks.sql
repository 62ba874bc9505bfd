-- keyhost schema v5: an issuance's source is checked, as its state and onDuplicate already are
-- (v2): a client id, or one of the webhooks keyhost knows.
--
-- SQLite adds a CHECK only by rebuilding the table. Rows carry a MAC over their content (see
-- src/integrity.rs), so every value, and each row's rowid, is copied unchanged: first into a
-- table whose columns have no type (no affinity, so nothing is converted), then back into the
-- new table, whose columns have the types the values were stored under.
--
-- kyc_events refers to issuances. Foreign keys cannot be switched off inside the migration's
-- transaction, so they are deferred to its commit: dropping the table counts the referring rows
-- as violations, and copying the issuances back settles them. The migration also runs
-- PRAGMA foreign_key_check before it commits.
PRAGMA defer_foreign_keys = ON;

CREATE TABLE issuances_v4 (
    row_id, id, source, idempotency_key, request_hash, email, issuer_did, credential_id,
    credential_subject, on_duplicate, state, attempts, next_attempt_at, core_claim_hash, user_uuid,
    duplicate, vc_status, vc_id, issuance_date, polls, last_status, last_error, created_at,
    updated_at, submitted_at, completed_at, mac
);
INSERT INTO issuances_v4
SELECT rowid, id, source, idempotency_key, request_hash, email, issuer_did, credential_id,
       credential_subject, on_duplicate, state, attempts, next_attempt_at, core_claim_hash,
       user_uuid, duplicate, vc_status, vc_id, issuance_date, polls, last_status, last_error,
       created_at, updated_at, submitted_at, completed_at, mac
FROM issuances;

DROP TABLE issuances;

CREATE TABLE issuances (
    id                 TEXT    PRIMARY KEY,
    -- API client that asked (its id), or the webhook that triggered it.
    source             TEXT    NOT NULL CHECK (
        source IN ('webhook:kyc', 'webhook:idenfy')
        OR (source <> '' AND source NOT GLOB 'webhook:*')
    ),
    idempotency_key    TEXT,
    -- SHA-256 (hex) of the canonical request, to tell a replay from a conflicting reuse of a key.
    request_hash       TEXT    NOT NULL,
    email              TEXT    NOT NULL,
    issuer_did         TEXT    NOT NULL,
    credential_id      TEXT    NOT NULL,
    credential_subject TEXT    NOT NULL,
    on_duplicate       TEXT    NOT NULL CHECK (on_duplicate IN ('ignore', 'revoke')),
    state              TEXT    NOT NULL CHECK (state IN ('queued', 'submitted', 'onchain', 'failed', 'stalled', 'unconfirmed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    INTEGER,
    core_claim_hash    TEXT,
    user_uuid          TEXT,
    duplicate          INTEGER NOT NULL DEFAULT 0,
    vc_status          TEXT,
    vc_id              TEXT,
    issuance_date      TEXT,
    polls              INTEGER NOT NULL DEFAULT 0,
    last_status        INTEGER,
    last_error         TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    submitted_at       INTEGER,
    completed_at       INTEGER,
    mac                BLOB
);
INSERT INTO issuances (
    rowid, id, source, idempotency_key, request_hash, email, issuer_did, credential_id,
    credential_subject, on_duplicate, state, attempts, next_attempt_at, core_claim_hash, user_uuid,
    duplicate, vc_status, vc_id, issuance_date, polls, last_status, last_error, created_at,
    updated_at, submitted_at, completed_at, mac
)
SELECT row_id, id, source, idempotency_key, request_hash, email, issuer_did, credential_id,
       credential_subject, on_duplicate, state, attempts, next_attempt_at, core_claim_hash,
       user_uuid, duplicate, vc_status, vc_id, issuance_date, polls, last_status, last_error,
       created_at, updated_at, submitted_at, completed_at, mac
FROM issuances_v4;

DROP TABLE issuances_v4;

CREATE UNIQUE INDEX issuances_idempotency ON issuances (source, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX issuances_state ON issuances (state, next_attempt_at);
CREATE INDEX issuances_hash ON issuances (core_claim_hash);
