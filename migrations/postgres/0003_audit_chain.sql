-- The audit trail as a hash chain (see migrations/0009_audit_chain.sql).
ALTER TABLE audit ADD COLUMN prev_hash BYTEA;
ALTER TABLE audit ADD COLUMN hash BYTEA;
ALTER TABLE audit ADD COLUMN mac BYTEA;
CREATE UNIQUE INDEX audit_chain_prev ON audit (prev_hash);
CREATE UNIQUE INDEX audit_chain_hash ON audit (hash);
