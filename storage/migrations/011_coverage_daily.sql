-- Daily coverage snapshots for the weekly progress report (`report progress`): one row per
-- day and city (the 13, 'unknown' for roster rows without one of them, '' for the whole
-- province), taken by storage.roster.take_daily_snapshot as of the day's end (or now, for
-- today). Re-taking a day replaces its rows. Definitions: storage/roster_report.py.

CREATE TABLE IF NOT EXISTS hj212.coverage_daily (
    day            date        NOT NULL,   -- local calendar day (protocol.timezone)
    city           text        NOT NULL,
    as_of          timestamptz NOT NULL,   -- the time the counts describe
    target         integer,                -- the plan's unit count for the city
    units          integer     NOT NULL,   -- units (credit codes) in the roster
    units_full     integer     NOT NULL,   -- units with every MN online
    units_partial  integer     NOT NULL,   -- units with some, not all, MNs online
    units_never    integer     NOT NULL,   -- units none of whose MNs was ever seen
    mns            integer     NOT NULL,   -- MNs in the roster
    mns_ever_seen  integer     NOT NULL,
    mns_online     integer     NOT NULL,
    mns_seen_24h   integer     NOT NULL,
    mns_never      integer     NOT NULL,
    mns_silent     integer     NOT NULL,   -- seen before, silent for more than silent_hours
    silent_hours   integer     NOT NULL,
    unknown_mns    integer     NOT NULL,   -- province row: MNs sending that are not in the roster
    taken_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT coverage_daily_pkey PRIMARY KEY (day, city)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hj212_reader') THEN
        GRANT SELECT ON hj212.coverage_daily TO hj212_reader;
    END IF;
END
$$;
