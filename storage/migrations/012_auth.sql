-- Device authentication (auth.policy = quarantine): frames from MNs that are not in the
-- registry are archived in hj212.frame with reason 'quarantine' and no value rows; this
-- view lists them. `hj212-gateway device approve MN` stores their values and marks them
-- 'approved'. raw holds the password as sent, so only the gateway's role reads the view.
CREATE OR REPLACE VIEW hj212.quarantine AS
SELECT received_at, id, peer, worker, mn, st, cn, qn, quirks, raw
FROM hj212.frame
WHERE reason = 'quarantine';

CREATE INDEX IF NOT EXISTS frame_quarantine_idx ON hj212.frame (mn, received_at)
    WHERE reason = 'quarantine';
