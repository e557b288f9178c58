-- TimescaleDB only (no-op on plain PostgreSQL): the time-series tables become
-- hypertables and get compression settings. Policies (compress after N days, retention)
-- depend on configuration and are set by the store after the migrations run.
-- The layout follows hj212.frame (002_frame.sql): only when the frame archive is a
-- hypertable do the value tables become hypertables too. A schema whose frame table was
-- partitioned before the extension was created stays plain PostgreSQL throughout (the
-- compression settings below would fail on a partitioned table).
--
-- Chunk intervals (ecosystem.md 4.3: the indexes of the chunks being written should fit
-- in about a quarter of memory): reading takes ~4,400 rows/s for a 12,000-device fleet,
-- ~380 M rows/day with real-time data, so 1 day; info and device_status are small, 7 days.
-- Compression segments by mn (queries filter by device) and orders by code then time so
-- each (mn, code) series compresses as one run (ecosystem.md 4.4).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM _timescaledb_catalog.hypertable
                   WHERE schema_name = 'hj212' AND table_name = 'frame') THEN
        RETURN;
    END IF;
    EXECUTE $sql$SELECT create_hypertable('hj212.reading', 'data_time',
                   chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE,
                   migrate_data => TRUE)$sql$;
    EXECUTE $sql$SELECT create_hypertable('hj212.info', 'data_time',
                   chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE,
                   migrate_data => TRUE)$sql$;
    EXECUTE $sql$SELECT create_hypertable('hj212.device_status', 'data_time',
                   chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE,
                   migrate_data => TRUE)$sql$;
    EXECUTE $sql$ALTER TABLE hj212.reading SET (timescaledb.compress,
                   timescaledb.compress_segmentby = 'mn',
                   timescaledb.compress_orderby = 'cn, code, data_time DESC')$sql$;
    EXECUTE $sql$ALTER TABLE hj212.info SET (timescaledb.compress,
                   timescaledb.compress_segmentby = 'mn',
                   timescaledb.compress_orderby = 'cn, pol_id, info_code, data_time DESC')$sql$;
    EXECUTE $sql$ALTER TABLE hj212.device_status SET (timescaledb.compress,
                   timescaledb.compress_segmentby = 'mn',
                   timescaledb.compress_orderby = 'cn, device, field, data_time DESC')$sql$;
    EXECUTE $sql$ALTER TABLE hj212.frame SET (timescaledb.compress,
                   timescaledb.compress_segmentby = 'mn',
                   timescaledb.compress_orderby = 'received_at DESC, id')$sql$;
END
$$;
