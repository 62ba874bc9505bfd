-- keyhost schema v3: a KYC delivery received again is counted on its first row, not stored again.
-- iDenfy signatures carry no timestamp, so a captured delivery can be replayed at will; each copy
-- used to add a row.

-- SHA-256 (hex) of the raw body; NULL for rows written before v3.
ALTER TABLE kyc_events ADD COLUMN delivery_hash TEXT;
-- How many more times the same delivery arrived, and when it last did.
ALTER TABLE kyc_events ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0 CHECK (repeats >= 0);
ALTER TABLE kyc_events ADD COLUMN last_received_at INTEGER;

CREATE UNIQUE INDEX kyc_events_delivery ON kyc_events (provider, delivery_hash)
    WHERE delivery_hash IS NOT NULL;
