-- keyhost schema v7: what several replicas on one database share, kept in this schema too so
-- that both engines hold the same tables (and `keyhost migrate --to` maps one onto the other).
--
-- An issuance is worked by one server at a time: the one that claimed it, until its claim runs
-- out (a server that died mid-way leaves it to the others once the claim has expired).
ALTER TABLE issuances ADD COLUMN claimed_by TEXT;
ALTER TABLE issuances ADD COLUMN claimed_until INTEGER;
CREATE INDEX issuances_claim ON issuances (state, claimed_until);

-- The servers sharing the store, each seen at its last refresh (a client's rate limit is shared
-- out between the live ones).
CREATE TABLE replicas (
    id         TEXT    PRIMARY KEY,
    started_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
);

-- Named leases (the key planner's): held by one server until `expires_at`, each taking a new
-- epoch.
CREATE TABLE leases (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
