-- Core tables of the hj212 schema (design.md section 4). Names and columns are an
-- interface for downstream applications: change them only with a new migration.
-- Every time is timestamptz (UTC inside; device wall-clock times are converted by the
-- gateway using protocol.timezone).

CREATE SCHEMA IF NOT EXISTS hj212;

-- Pollutant / process / electricity values: one row per (mn, cn, data_time, code).
CREATE TABLE hj212.reading (
    data_time    timestamptz      NOT NULL,
    mn           text             NOT NULL,
    cn           integer          NOT NULL,
    code         text             NOT NULL,   -- as received (2005 or 2017 code)
    code_2017    text,                        -- normalised; NULL when unknown
    rtd          double precision,
    avg          double precision,
    min          double precision,
    max          double precision,
    cou          double precision,
    zs_rtd       double precision,
    zs_avg       double precision,
    zs_min       double precision,
    zs_max       double precision,
    flag         text,
    eflag        text,
    sample_time  timestamptz,
    extra        jsonb,                       -- fields without a column, raw text
    raw          text             NOT NULL,   -- the code's fields exactly as received
    received_at  timestamptz      NOT NULL,
    revision     integer          NOT NULL DEFAULT 0,  -- times a resend changed the values
    CONSTRAINT reading_pkey PRIMARY KEY (mn, cn, data_time, code)
);

-- Field-device information (iXXXXX-Info items).
CREATE TABLE hj212.info (
    data_time    timestamptz      NOT NULL,
    mn           text             NOT NULL,
    cn           integer          NOT NULL,
    pol_id       text             NOT NULL,   -- PolId of the packet, '' when absent
    info_code    text             NOT NULL,
    value_text   text             NOT NULL,
    value_num    double precision,
    received_at  timestamptz      NOT NULL,
    revision     integer          NOT NULL DEFAULT 0,
    CONSTRAINT info_pkey PRIMARY KEY (mn, cn, data_time, pol_id, info_code)
);

-- Treatment-facility run status (SBx-RS), daily run time (SBx-RT), DAU restart time.
CREATE TABLE hj212.device_status (
    data_time    timestamptz      NOT NULL,
    mn           text             NOT NULL,
    cn           integer          NOT NULL,
    device       text             NOT NULL,   -- SB1 ...; '' for RestartTime
    field        text             NOT NULL,   -- RS, RT, RestartTime
    value_text   text             NOT NULL,
    value_num    double precision,
    received_at  timestamptz      NOT NULL,
    revision     integer          NOT NULL DEFAULT 0,
    CONSTRAINT device_status_pkey PRIMARY KEY (mn, cn, data_time, device, field)
);

-- Registry: one row per MN. password is readable only by the gateway's own role.
CREATE TABLE hj212.device (
    mn                      text        PRIMARY KEY,
    unit_name               text,
    city                    text,
    county                  text,
    park                    text,
    credit_code             text,       -- unified social credit code of the unit
    permit_no               text,       -- pollutant discharge permit number
    industry                text,
    outlet_type             text,       -- e.g. wastewater, flue gas
    monitored               text[]      NOT NULL DEFAULT '{}',  -- monitored factor codes
    rtd_interval_s          integer,    -- expected real-time upload interval
    minute_interval_s       integer,    -- expected minute-data interval
    hourly                  boolean     NOT NULL DEFAULT true,  -- hourly data expected
    password                text,
    profile                 text,       -- code-table profile (2005, 2017, 2025, ...)
    crc_variants            text[]      NOT NULL DEFAULT '{}',  -- allowed beyond the default
    enabled                 boolean     NOT NULL DEFAULT true,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- Presence: one row per MN; online is derived from last_seen, never stored.
CREATE TABLE hj212.presence (
    mn              text        PRIMARY KEY,
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    last_data_time  timestamptz,
    peer            text        NOT NULL,
    worker          integer     NOT NULL,
    version         text        NOT NULL,
    frames          bigint      NOT NULL DEFAULT 0,
    rejects         bigint      NOT NULL DEFAULT 0
);
