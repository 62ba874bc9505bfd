-- Named admin credentials (see migrations/0008_admins.sql).
CREATE TABLE admins (
    id          TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    role        TEXT   NOT NULL CHECK (role IN ('reader', 'operator')),
    secret_hash BYTEA  NOT NULL,
    created_at  BIGINT NOT NULL,
    disabled_at BIGINT,
    mac         BYTEA
);
