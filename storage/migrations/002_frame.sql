-- The frame archive: every frame, accepted or rejected, exactly as received.
-- With TimescaleDB installed in this database (CREATE EXTENSION timescaledb, before the
-- first migrate) it is a hypertable on received_at with 1-day chunks (a day of a
-- 12,000-device fleet is ~1.5 M frames, ~0.6 GB with raw bytes: chunk plus index stay far
-- below a quarter of shared_buffers-sized memory); otherwise a table with native daily
-- range partitions on received_at, created ahead by the store and dropped by `maintain`.
-- The choice is made once, at the first migrate.

CREATE SEQUENCE hj212.frame_id_seq AS bigint CACHE 100;  -- CACHE: one catalog hit per 100 ids

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        CREATE TABLE hj212.frame (
            received_at  timestamptz NOT NULL,
            id           bigint      NOT NULL DEFAULT nextval('hj212.frame_id_seq'),
            peer         text        NOT NULL,
            worker       integer     NOT NULL,
            mn           text,
            st           text,
            cn           text,
            qn           text,
            ok           boolean     NOT NULL,
            reason       text,
            quirks       text[]      NOT NULL DEFAULT '{}',
            raw          bytea       NOT NULL,
            CONSTRAINT frame_pkey PRIMARY KEY (received_at, id)
        );
        EXECUTE $sql$SELECT create_hypertable('hj212.frame', 'received_at',
                       chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE)$sql$;
    ELSE
        CREATE TABLE hj212.frame (
            received_at  timestamptz NOT NULL,
            id           bigint      NOT NULL DEFAULT nextval('hj212.frame_id_seq'),
            peer         text        NOT NULL,
            worker       integer     NOT NULL,
            mn           text,
            st           text,
            cn           text,
            qn           text,
            ok           boolean     NOT NULL,
            reason       text,
            quirks       text[]      NOT NULL DEFAULT '{}',
            raw          bytea       NOT NULL,
            CONSTRAINT frame_pkey PRIMARY KEY (received_at, id)
        ) PARTITION BY RANGE (received_at);
    END IF;
END
$$;

ALTER SEQUENCE hj212.frame_id_seq OWNED BY hj212.frame.id;

-- Replay and audit look frames up by device and time.
CREATE INDEX frame_mn_received_idx ON hj212.frame (mn, received_at);
