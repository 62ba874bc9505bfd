-- keyhost schema v11: verifier sightings. Per verifier (user agent): when it first and last
-- fetched the JWKS, how often, its last few requests, and every kid it has been served in a key
-- set (with when first), so that an activation can wait until a given verifier has provably
-- seen the new key. Written by each server's background round, never by the JWKS path itself.
CREATE TABLE verifiers (
    user_agent TEXT    PRIMARY KEY,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    requests   INTEGER NOT NULL,
    -- JSON array of the last sightings: at, address, etag, revalidated.
    recent     TEXT    NOT NULL
);
CREATE TABLE verifier_kids (
    user_agent TEXT    NOT NULL REFERENCES verifiers (user_agent),
    kid        TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (user_agent, kid)
);
