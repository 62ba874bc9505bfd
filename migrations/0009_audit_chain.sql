-- keyhost schema v9: the audit trail becomes a hash chain. Each row carries the hash of its
-- predecessor and its own (SHA-256 over a canonical encoding of the row and that predecessor), and
-- a MAC of its hash under the master key. Rows from before the chain are chained, as found, by the
-- first server that starts on this schema. Two rows can never name the same predecessor, so the
-- chain cannot fork, whatever the number of writers.
ALTER TABLE audit ADD COLUMN prev_hash BLOB;
ALTER TABLE audit ADD COLUMN hash BLOB;
ALTER TABLE audit ADD COLUMN mac BLOB;
CREATE UNIQUE INDEX audit_chain_prev ON audit (prev_hash);
CREATE UNIQUE INDEX audit_chain_hash ON audit (hash);
