-- Read access for dashboards and downstream platforms.
-- frame.raw holds the bytes exactly as received, device passwords included, and
-- device.password is needed to build commands: both stay readable only by the role that
-- owns the schema (the gateway's). Everyone else reads through hj212_reader.

CREATE VIEW hj212.frame_public AS
SELECT received_at, id, peer, worker, mn, st, cn, qn, ok, reason, quirks,
       octet_length(raw) AS raw_bytes
FROM hj212.frame;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hj212_reader') THEN
        BEGIN
            CREATE ROLE hj212_reader NOLOGIN;
        EXCEPTION
            -- another database of the cluster created it at the same moment
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE WARNING 'hj212: no CREATEROLE privilege: create role hj212_reader and re-run the grants of 003_access.sql';
                RETURN;
        END;
    END IF;
    GRANT USAGE ON SCHEMA hj212 TO hj212_reader;
    GRANT SELECT ON hj212.reading, hj212.info, hj212.device_status, hj212.presence,
                    hj212.frame_public
        TO hj212_reader;
    GRANT SELECT (mn, unit_name, city, county, park, credit_code, permit_no, industry,
                  outlet_type, monitored, rtd_interval_s, minute_interval_s, hourly,
                  profile, crc_variants, enabled, created_at, updated_at)
        ON hj212.device TO hj212_reader;
END
$$;
