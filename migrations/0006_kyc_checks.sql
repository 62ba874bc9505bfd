-- keyhost schema v6: a KYC delivery's provider and outcome are checked, as an issuance's state,
-- source and onDuplicate are (v2, v5).
--
-- SQLite adds a CHECK only by rebuilding the table; every value and each row's rowid are copied
-- unchanged through a table whose columns have no type (no affinity, nothing is converted).
-- 'rejected' stays allowed: the first schema named it, although no keyhost has written it (a
-- delivery refused for its signature goes to the audit trail instead).
CREATE TABLE kyc_events_v5 (
    row_id, provider, scan_ref, client_id, final, status, outcome, detail, issuance_id,
    received_at, delivery_hash, repeats, last_received_at
);
INSERT INTO kyc_events_v5
SELECT rowid, provider, scan_ref, client_id, final, status, outcome, detail, issuance_id,
       received_at, delivery_hash, repeats, last_received_at
FROM kyc_events;

DROP TABLE kyc_events;

CREATE TABLE kyc_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    provider         TEXT    NOT NULL CHECK (provider IN ('idenfy', 'kyc-complete')),
    scan_ref         TEXT,
    client_id        TEXT,
    final            INTEGER,
    status           TEXT,
    outcome          TEXT    NOT NULL CHECK (
        outcome IN ('queued', 'unmatched', 'ignored', 'duplicate', 'rejected')
    ),
    detail           TEXT,
    issuance_id      TEXT REFERENCES issuances (id),
    received_at      INTEGER NOT NULL,
    -- SHA-256 (hex) of the raw body (kyc-complete: of the signed text); NULL before v3.
    delivery_hash    TEXT,
    -- How many more times the same delivery arrived, and when it last did.
    repeats          INTEGER NOT NULL DEFAULT 0 CHECK (repeats >= 0),
    last_received_at INTEGER
);
INSERT INTO kyc_events (
    id, provider, scan_ref, client_id, final, status, outcome, detail, issuance_id, received_at,
    delivery_hash, repeats, last_received_at
)
SELECT row_id, provider, scan_ref, client_id, final, status, outcome, detail, issuance_id,
       received_at, delivery_hash, repeats, last_received_at
FROM kyc_events_v5;

DROP TABLE kyc_events_v5;

-- One issuance per approved verification (an unmatched one may be redelivered once mapped).
CREATE UNIQUE INDEX kyc_events_scan_ref ON kyc_events (provider, scan_ref)
    WHERE outcome = 'queued';
CREATE UNIQUE INDEX kyc_events_delivery ON kyc_events (provider, delivery_hash)
    WHERE delivery_hash IS NOT NULL;
