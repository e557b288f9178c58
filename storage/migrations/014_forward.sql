-- Store and forward to upstream platforms (forward settings): one row per frame and upstream.
--
-- A row is inserted in the same transaction that stores the frame (hj212.frame), so a
-- frame is either stored and queued for every upstream it was selected for, or neither.
-- The gateway worker that received the frame sends it (in id order per device, which is
-- the order frames were stored), and records the confirmation: the upstream's 9014 when
-- the frame asked for a reply (confirm), else the write to the upstream's connection.
-- A resent frame (the same bytes) finds its digest already queued for the upstream and
-- adds nothing (ON CONFLICT DO NOTHING), so it is not forwarded twice. Confirmed rows
-- lose their bytes at once and are deleted after forward.keep_confirmed_hours.
CREATE TABLE hj212.forward_outbox (
    id            bigserial    PRIMARY KEY,     -- the sending order
    upstream      text         NOT NULL,        -- forward.upstreams[].name
    digest        bytea        NOT NULL,        -- BLAKE2b-128 of raw
    mn            text         NOT NULL,
    worker        integer      NOT NULL,        -- the worker that received (and sends) it
    received_at   timestamptz  NOT NULL,        -- when the gateway received the frame
    queued_at     timestamptz  NOT NULL DEFAULT now(),
    confirm       boolean      NOT NULL,        -- delivered on the upstream's 9014
    qn            text,
    raw           bytea,                        -- the frame as received; NULL once confirmed
    attempts      integer      NOT NULL DEFAULT 0,  -- times written to the upstream
    sent_at       timestamptz,                  -- first write
    confirmed_at  timestamptz,
    outcome       text,                         -- '9014', 'written', 'unanswered', 'refused'
    CONSTRAINT forward_outbox_digest_key UNIQUE (upstream, digest),
    CONSTRAINT forward_outbox_outcome_check CHECK (
        outcome IN ('9014', 'written', 'unanswered', 'refused'))
);

-- What a worker still has to send to an upstream, in order...
CREATE INDEX forward_outbox_pending_idx ON hj212.forward_outbox (upstream, worker, id)
    WHERE confirmed_at IS NULL;
-- ...and whether another worker still holds older frames of a device that moved to it.
CREATE INDEX forward_outbox_pending_mn_idx ON hj212.forward_outbox (upstream, mn, id)
    WHERE confirmed_at IS NULL;

-- Pruning finds old rows by queue time: rows are appended in time order, so a BRIN index
-- (a few pages for millions of rows) leads the DELETE to the old blocks.
CREATE INDEX forward_outbox_queued_brin ON hj212.forward_outbox USING brin (queued_at);

-- Readers see the queue without the frames (raw holds the device's password).
CREATE VIEW hj212.forward_outbox_public AS
SELECT id, upstream, mn, worker, received_at, queued_at, confirm, qn, attempts, sent_at,
       confirmed_at, outcome
FROM hj212.forward_outbox;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hj212_reader') THEN
        GRANT SELECT ON hj212.forward_outbox_public TO hj212_reader;
    END IF;
END
$$;
