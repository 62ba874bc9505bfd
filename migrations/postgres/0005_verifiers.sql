-- Verifier sightings (see migrations/0011_verifiers.sql).
CREATE TABLE verifiers (
    user_agent TEXT   PRIMARY KEY,
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    requests   BIGINT NOT NULL,
    recent     TEXT   NOT NULL
);
CREATE TABLE verifier_kids (
    user_agent TEXT   NOT NULL REFERENCES verifiers (user_agent),
    kid        TEXT   NOT NULL,
    first_seen BIGINT NOT NULL,
    PRIMARY KEY (user_agent, kid)
);
