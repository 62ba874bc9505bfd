-- keyhost schema v4: the rows keyhost trusts carry a MAC, and keys carry the time a running
-- server has actually served them.
--
-- MACs: HMAC-SHA256 under a key derived from the master key, over a canonical encoding of the
-- row (see src/integrity.rs). Someone who can write the database but does not hold the master
-- key cannot make a row keyhost publishes, signs with, authenticates or issues for. Rows written
-- before v4 are given their MAC once, by the first keyhost that opens the store with the master
-- key (the setting `row_macs_since` records when); after that a row without a valid MAC is
-- reported and ignored, never trusted.
ALTER TABLE keys ADD COLUMN mac BLOB;
ALTER TABLE clients ADD COLUMN mac BLOB;
ALTER TABLE issuances ADD COLUMN mac BLOB;
ALTER TABLE kyc_subjects ADD COLUMN mac BLOB;
ALTER TABLE settings ADD COLUMN mac BLOB;

-- Served time: how much of its publish lead a pending key, and of its grace a retired key, a
-- running server still has to serve. A key activates only once its lead has been served and
-- expires only once its grace has, so a wall clock that is wrong at a restart (a host booting
-- before NTP, a restored snapshot) can never shorten either: time only counts while a server
-- publishes the key, measured on its monotonic clock. Keys already pending or retired keep what
-- the wall clock says they have left.
ALTER TABLE keys ADD COLUMN lead_remaining INTEGER NOT NULL DEFAULT 0 CHECK (lead_remaining >= 0);
ALTER TABLE keys ADD COLUMN grace_remaining INTEGER NOT NULL DEFAULT 0 CHECK (grace_remaining >= 0);
UPDATE keys SET lead_remaining = MAX(0, signable_at - unixepoch())
    WHERE state = 'pending' AND signable_at IS NOT NULL;
UPDATE keys SET grace_remaining = MAX(0, expires_at - unixepoch())
    WHERE state = 'retired' AND expires_at IS NOT NULL;

-- The latest `exp` of a token the key signed: a key stays published until then, even when the
-- clock that signed it was ahead (its tokens carry expiry times of that clock).
ALTER TABLE keys ADD COLUMN last_exp INTEGER;
