-- keyhost schema v8: named admin credentials, so that the audit trail says which person did what.
-- Like API clients, only a hash of each credential's secret is stored, and each row carries a
-- MAC under the master key. A name is never reused: it is the actor of the audit rows of every
-- change made with that credential.
CREATE TABLE admins (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    role        TEXT    NOT NULL CHECK (role IN ('reader', 'operator')),
    -- SHA-256 of the secret part of the credential.
    secret_hash BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    disabled_at INTEGER,
    mac         BLOB
);
