-- The networking roster (the plan's attachment 3) lives in hj212.device, one row per MN:
-- the columns of 001 hold unit name, city, county, park, credit code, permit number,
-- industry, outlet type and intervals; these are the attachment's remaining columns and
-- the online-window override. Written by `hj212-gateway device import`.

ALTER TABLE hj212.device
    ADD COLUMN IF NOT EXISTS networked_city      boolean,     -- 是否与市级平台联网 (NULL: not stated)
    ADD COLUMN IF NOT EXISTS networked_province  boolean,     -- 是否与省级平台联网
    ADD COLUMN IF NOT EXISTS monitored_content   text,        -- 监控内容, as written in the roster
    ADD COLUMN IF NOT EXISTS remark              text,        -- 备注
    ADD COLUMN IF NOT EXISTS online_after_s      integer,     -- online window; NULL: 3 x interval
    ADD COLUMN IF NOT EXISTS roster_source       text,        -- roster file that last changed the row
    ADD COLUMN IF NOT EXISTS roster_imported_at  timestamptz; -- when that import ran

-- Reports group by city and county and count units by credit code.
CREATE INDEX IF NOT EXISTS device_city_county_idx ON hj212.device (city, county);
CREATE INDEX IF NOT EXISTS device_credit_code_idx ON hj212.device (credit_code);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hj212_reader') THEN
        GRANT SELECT (networked_city, networked_province, monitored_content, remark,
                      online_after_s, roster_source, roster_imported_at)
            ON hj212.device TO hj212_reader;
    END IF;
END
$$;
