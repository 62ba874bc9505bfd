-- keyhost schema v10: personal data is kept only as long as needed. When an issuance's or a KYC
-- delivery's personal data is purged (after KEYHOST_ISSUANCE_RETENTION, or on an erasure request)
-- the row stays, with its ids, states, times and hashes, and says when it was erased.
ALTER TABLE issuances ADD COLUMN erased_at INTEGER;
ALTER TABLE kyc_events ADD COLUMN erased_at INTEGER;
CREATE INDEX issuances_retention ON issuances (updated_at) WHERE erased_at IS NULL;
CREATE INDEX kyc_events_retention ON kyc_events (received_at) WHERE erased_at IS NULL;
