-- Purging personal data (see migrations/0010_personal_data.sql).
ALTER TABLE issuances ADD COLUMN erased_at BIGINT;
ALTER TABLE kyc_events ADD COLUMN erased_at BIGINT;
CREATE INDEX issuances_retention ON issuances (updated_at) WHERE erased_at IS NULL;
CREATE INDEX kyc_events_retention ON kyc_events (received_at) WHERE erased_at IS NULL;
