-- keyhost schema v1: keys, API clients, settings and the audit trail.
-- Times are Unix seconds (UTC).

CREATE TABLE keys (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kid             TEXT    NOT NULL,
    alg             TEXT    NOT NULL CHECK (alg IN ('ES256', 'RS256')),
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'active', 'retired', 'expired', 'revoked')),
    origin          TEXT    NOT NULL CHECK (origin IN ('generated', 'imported')),
    bits            INTEGER NOT NULL,
    -- The public half as a JWK (no private members: the type that writes it has none).
    public_jwk      TEXT    NOT NULL,
    -- AES-256-GCM envelope of the PKCS#8 private key; NULL once destroyed.
    private_key_enc BLOB,
    master_key_id   TEXT,
    created_at      INTEGER NOT NULL,
    published_at    INTEGER,
    signable_at     INTEGER,
    activated_at    INTEGER,
    retired_at      INTEGER,
    expires_at      INTEGER,
    revoked_at      INTEGER,
    destroyed_at    INTEGER,
    -- Live keys keep their private key; expired and revoked keys never do.
    CHECK ((state IN ('expired', 'revoked')) = (private_key_enc IS NULL)),
    CHECK (private_key_enc IS NULL OR master_key_id IS NOT NULL),
    CHECK (state <> 'active' OR (activated_at IS NOT NULL AND signable_at IS NOT NULL)),
    CHECK (signable_at IS NULL OR published_at IS NOT NULL)
);

-- At most one signing key per algorithm, and one successor waiting.
CREATE UNIQUE INDEX keys_one_active_per_alg ON keys (alg) WHERE state = 'active';
CREATE UNIQUE INDEX keys_one_pending_per_alg ON keys (alg) WHERE state = 'pending';
-- A kid names one live key; an operator-chosen kid may be reused once its key has left the JWKS.
CREATE UNIQUE INDEX keys_live_kid ON keys (kid) WHERE state IN ('pending', 'active', 'retired');

CREATE TABLE clients (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    -- JSON array of allowed scopes.
    scopes      TEXT    NOT NULL,
    -- SHA-256 of the secret part of the API key.
    secret_hash BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    disabled_at INTEGER
);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    -- JSON object with details; never secrets.
    detail  TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_at ON audit (at);
