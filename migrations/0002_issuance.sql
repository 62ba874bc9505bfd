-- keyhost schema v2: durable issuance records, KYC webhook events and clientId → email mappings.

CREATE TABLE issuances (
    id                 TEXT    PRIMARY KEY,
    -- API client that asked, or the webhook that triggered it ('webhook:kyc', 'webhook:idenfy').
    source             TEXT    NOT NULL,
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
    completed_at       INTEGER
);
CREATE UNIQUE INDEX issuances_idempotency ON issuances (source, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX issuances_state ON issuances (state, next_attempt_at);
CREATE INDEX issuances_hash ON issuances (core_claim_hash);

CREATE TABLE kyc_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    provider     TEXT    NOT NULL,
    scan_ref     TEXT,
    client_id    TEXT,
    final        INTEGER,
    status       TEXT,
    -- queued | unmatched | ignored | duplicate | rejected
    outcome      TEXT    NOT NULL,
    detail       TEXT,
    issuance_id  TEXT REFERENCES issuances (id),
    received_at  INTEGER NOT NULL
);
-- One issuance per approved verification (an unmatched one may be redelivered once mapped).
CREATE UNIQUE INDEX kyc_events_scan_ref ON kyc_events (provider, scan_ref)
    WHERE outcome = 'queued';

CREATE TABLE kyc_subjects (
    client_id  TEXT    PRIMARY KEY,
    email      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
