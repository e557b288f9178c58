-- Platform-to-device commands (反控, protocol.md 6.3): one row per command. Any client may
-- insert a row (mn, cn, parameters, optionally requested_by and ttl); the insert trigger
-- sends a NOTIFY on channel hj212_command, every gateway worker LISTENs, and the worker
-- holding the device's connection claims the row atomically and sends it (design.md 8).
--
-- States: queued -> sent (written to the device; resent with the same QN per the device's
-- OverTime / ReCount) -> acknowledged (9011 QnRtn=1) -> done (9012 ExeRtn=1, or the data
-- answer) | failed (QnRtn or ExeRtn not 1, no answer, ...: see reason). A command still
-- queued when its ttl has passed becomes expired.
CREATE TABLE hj212.command (
    id               bigserial    PRIMARY KEY,
    mn               text         NOT NULL,
    cn               integer      NOT NULL,
    parameters       jsonb        NOT NULL DEFAULT '{}'::jsonb,  -- {"key": "value", ...}
    qn               text,                     -- set when first sent; resends reuse it
    state            text         NOT NULL DEFAULT 'queued',
    requested_by     text         NOT NULL DEFAULT current_user,
    created_at       timestamptz  NOT NULL DEFAULT now(),
    sent_at          timestamptz,              -- first send
    acknowledged_at  timestamptz,              -- 9011 with QnRtn=1
    finished_at      timestamptz,              -- done, failed or expired
    ttl              interval,                 -- time allowed in queued; NULL: commands.ttl_s
    attempts         integer      NOT NULL DEFAULT 0,  -- frames sent
    worker           integer,                  -- the gateway worker that sent it
    deadline         timestamptz,              -- when the sending worker next gives up waiting
    qn_rtn           integer,                  -- 9011 QnRtn (protocol.md 6.4)
    exe_rtn          integer,                  -- 9012 ExeRtn
    answer           jsonb,                    -- data answers (get-type) or history counts
    reason           text,                     -- why it failed, in one word
    CONSTRAINT command_state_check CHECK (
        state IN ('queued', 'sent', 'acknowledged', 'done', 'failed', 'expired')),
    CONSTRAINT command_parameters_check CHECK (jsonb_typeof(parameters) = 'object')
);

-- The worker looks for the oldest queued command of a connected device...
CREATE INDEX command_queued_idx ON hj212.command (mn, id) WHERE state = 'queued';
-- ...sends one at a time per device (unique: two workers claiming different commands of
-- one device at the same moment cannot both win; the loser finds nothing to claim)...
CREATE UNIQUE INDEX command_active_idx ON hj212.command (mn)
    WHERE state IN ('sent', 'acknowledged');
-- ...and operators list a device's commands by time.
CREATE INDEX command_mn_created_idx ON hj212.command (mn, created_at);

-- Payload "<id> <state> <mn>" (the MN last: it is the only free text).
CREATE FUNCTION hj212.command_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hj212_command', NEW.id::text || ' ' || NEW.state || ' ' || NEW.mn);
    RETURN NULL;
END
$$;

CREATE TRIGGER command_notify_insert AFTER INSERT ON hj212.command
    FOR EACH ROW EXECUTE FUNCTION hj212.command_notify();
CREATE TRIGGER command_notify_state AFTER UPDATE OF state ON hj212.command
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION hj212.command_notify();

-- Secrets a command may carry (1072 NewPW, 2025 1014 NewSK) are hidden from readers.
CREATE VIEW hj212.command_public AS
SELECT id, mn, cn, parameters - 'NewPW' - 'NewSK' AS parameters, qn, state, requested_by,
       created_at, sent_at, acknowledged_at, finished_at, ttl, attempts, worker, deadline,
       qn_rtn, exe_rtn, answer, reason
FROM hj212.command;

-- Clock skew (device clock minus ours, seconds) measured from real-time uploads.
ALTER TABLE hj212.presence
    ADD COLUMN clock_skew_s  double precision,
    ADD COLUMN clock_skew_at timestamptz;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hj212_reader') THEN
        GRANT SELECT ON hj212.command_public TO hj212_reader;
    END IF;
END
$$;
