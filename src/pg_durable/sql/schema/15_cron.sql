-- pg_durable: standard 5-field cron for df.wait_for_schedule (SPEC "Where we deliberately
-- differ" 5). pg_durable itself validated with the Rust `cron` crate behind a "0 " seconds
-- prefix, so its day-of-week ran 1-7 with Sunday = 1 and a 6th field became a year; here the
-- fields are those of crontab(5) and docs/schedules.md is the user's reference.
--
--   minute 0-59 · hour 0-23 · day-of-month 1-31 · month 1-12 or JAN-DEC ·
--   day-of-week 0-7 or SUN-SAT (0 and 7 are Sunday)
--   items: * | N | N-M | */S | N-M/S | N/S (= N-max/S), comma-separated lists;
--   macros: @yearly @annually @monthly @weekly @daily @midnight @hourly.
--
-- A schedule names wall-clock minutes in the time zone pg_durable.cron_timezone (UTC by
-- default). Each matching wall-clock minute fires once: at the first instant the clock shows
-- it, or, when the clock skips it (spring forward), at the first instant after the gap.

-- A parsed expression: the matching values of each field, sorted and distinct. Day-of-week
-- 7 is folded into 0. The two flags record a day field written exactly `*`, which is what
-- decides between the AND and the OR of the day fields (see df._cron_next_local).
CREATE TYPE df._cron_schedule AS (
    minutes          int[],
    hours            int[],
    days             int[],
    months           int[],
    weekdays         int[],
    days_star        boolean,
    weekdays_star    boolean
);

-- One field: its values, or the reason it is invalid (then vals is NULL). `names` maps names
-- to values from `lo` on (JAN = 1, SUN = 0); `step_max` bounds a step (a step of a whole
-- field's span still names its start only: `*/60` is minute 0).
CREATE FUNCTION df._cron_field(items text, field text, lo int, hi int, step_max int,
                               names text[], OUT vals int[], OUT problem text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    list  text[] := string_to_array(items, ',');
    item  text;
    m     text[];
    tok   text;
    bound int[];
    a     int;
    b     int;
    step  int;
    k     int;
BEGIN
    vals := '{}';
    FOREACH item IN ARRAY list LOOP
        step := 1;
        IF item = '*' THEN                       -- the common case, without a regex
            a := lo; b := hi;
        ELSE
            -- The shape is checked with a regex that captures nothing (which PostgreSQL
            -- matches several times faster than one with groups), then the parts are cut out.
            IF item !~ '^(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9A-Za-z]+)?$' THEN
                problem := CASE WHEN item = '' THEN field || ' list has an empty item'
                                ELSE format('%s item ''%s'' is malformed (expected *, N, N-M, */S, N-M/S or N/S)',
                                            field, item)
                           END;
                vals := NULL;
                RETURN;
            END IF;
            -- m: star, start, end, step.
            tok := split_part(item, '/', 1);
            m := ARRAY[CASE WHEN tok = '*' THEN tok END,
                       CASE WHEN tok <> '*' THEN split_part(tok, '-', 1) END,
                       nullif(split_part(tok, '-', 2), ''),
                       nullif(split_part(item, '/', 2), '')];
            bound := '{}';
            FOR i IN 2 .. 3 LOOP
                tok := m[i];
                CONTINUE WHEN tok IS NULL;
                IF tok ~ '^[0-9]+$' THEN
                    IF tok::numeric NOT BETWEEN lo AND hi THEN
                        problem := format('%s value %s is out of range %s-%s', field, tok, lo, hi);
                    END IF;
                    k := CASE WHEN problem IS NULL THEN tok::int END;
                ELSIF names IS NOT NULL AND upper(tok) = ANY (names) THEN
                    k := array_position(names, upper(tok)) - 1 + lo;
                    -- A range ending in SUN (MON-SUN, FRI-SUN) means Sunday as 7.
                    IF field = 'day-of-week' AND k = 0 AND i = 3 THEN
                        k := 7;
                    END IF;
                ELSIF names IS NULL THEN
                    problem := format('%s value ''%s'' is not a number', field, tok);
                ELSE
                    problem := format('%s value ''%s'' is not a number or a %s name (%s-%s)', field,
                                      tok, CASE field WHEN 'month' THEN 'month' ELSE 'day' END,
                                      names[1], names[array_upper(names, 1)]);
                END IF;
                IF problem IS NOT NULL THEN
                    vals := NULL;
                    RETURN;
                END IF;
                bound := bound || k;
            END LOOP;
            IF m[4] IS NOT NULL THEN
                IF m[4] !~ '^[0-9]+$' THEN
                    problem := format('%s step ''%s'' is not a number', field, m[4]);
                ELSIF m[4]::numeric NOT BETWEEN 1 AND step_max THEN
                    problem := format('%s step %s is out of range 1-%s', field, m[4], step_max);
                END IF;
                IF problem IS NOT NULL THEN
                    vals := NULL;
                    RETURN;
                END IF;
                step := m[4]::int;
            END IF;
            IF m[1] IS NOT NULL THEN                 -- */S
                a := lo; b := hi;
            ELSIF m[3] IS NOT NULL THEN              -- N-M  N-M/S
                a := bound[1]; b := bound[2];
                IF a > b THEN
                    problem := format('%s range %s-%s is reversed', field, m[2], m[3]);
                    vals := NULL;
                    RETURN;
                END IF;
            ELSIF m[4] IS NOT NULL THEN              -- N/S: from N to the field's maximum
                a := bound[1]; b := hi;
            ELSE                                     -- N
                a := bound[1]; b := a;
            END IF;
        END IF;
        vals := vals || ARRAY(SELECT generate_series(a, b, step));
    END LOOP;
    -- Sorted and distinct, Sunday as 0. (One item is sorted and distinct already.)
    IF array_length(list, 1) > 1 OR (field = 'day-of-week' AND 7 = ANY (vals)) THEN
        vals := ARRAY(SELECT DISTINCT CASE WHEN v = 7 AND field = 'day-of-week' THEN 0 ELSE v END
                        FROM unnest(vals) AS v ORDER BY 1);
    END IF;
END
$$;

-- Parse an expression: the schedule, or the complete error message (then schedule is NULL).
-- Kept apart from df._cron_parse so that df._flatten can report the message without trapping
-- an exception (a subtransaction per node).
CREATE FUNCTION df._cron_try_parse(expr text, OUT schedule df._cron_schedule, OUT error text)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    field_names constant text[] := ARRAY['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
    lows        constant int[] := ARRAY[0, 0, 1, 1, 0];
    highs       constant int[] := ARRAY[59, 23, 31, 12, 7];
    step_maxes  constant int[] := ARRAY[60, 24, 31, 12, 7];
    month_names constant text[] := ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG',
                                         'SEP', 'OCT', 'NOV', 'DEC'];
    day_names   constant text[] := ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
    -- Longest month, 1-based: February counts its 29th (it occurs within 8 years).
    month_days  constant int[] := ARRAY[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    body    text := btrim(expr, E' \t\r\n\f\v');
    fields  text[];
    got     int;
    r       record;
    i       int;
    longest int;
BEGIN
    IF left(body, 1) = '@' THEN
        body := CASE lower(body)
                    WHEN '@yearly' THEN '0 0 1 1 *'
                    WHEN '@annually' THEN '0 0 1 1 *'
                    WHEN '@monthly' THEN '0 0 1 * *'
                    WHEN '@weekly' THEN '0 0 * * 0'
                    WHEN '@daily' THEN '0 0 * * *'
                    WHEN '@midnight' THEN '0 0 * * *'
                    WHEN '@hourly' THEN '0 * * * *'
                END;
        IF body IS NULL THEN
            error := CASE WHEN lower(btrim(expr, E' \t\r\n\f\v')) = '@reboot'
                          THEN '@reboot is not supported (a schedule needs a time)'
                          ELSE 'unknown macro (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)'
                     END;
        END IF;
    END IF;
    IF error IS NULL THEN
        fields := CASE WHEN body = '' THEN '{}' ELSE regexp_split_to_array(body, '\s+') END;
        got := coalesce(array_length(fields, 1), 0);
        IF got <> 5 THEN
            error := format('expected 5 fields (minute hour day-of-month month day-of-week), got %s', got);
        END IF;
    END IF;
    IF error IS NULL THEN
        schedule := ROW(NULL, NULL, NULL, NULL, NULL, fields[3] = '*', fields[5] = '*');
        FOR i IN 1 .. 5 LOOP
            r := df._cron_field(fields[i], field_names[i], lows[i], highs[i], step_maxes[i],
                                CASE i WHEN 4 THEN month_names WHEN 5 THEN day_names END);
            IF r.problem IS NOT NULL THEN
                error := r.problem;
                EXIT;
            END IF;
            CASE i
                WHEN 1 THEN schedule.minutes := r.vals;
                WHEN 2 THEN schedule.hours := r.vals;
                WHEN 3 THEN schedule.days := r.vals;
                WHEN 4 THEN schedule.months := r.vals;
                ELSE schedule.weekdays := r.vals;
            END CASE;
        END LOOP;
    END IF;
    -- With day-of-week `*` only day-of-month selects days; a day no selected month has
    -- (30 in February, 31 in April) would never fire: refuse it rather than wait forever.
    IF error IS NULL AND schedule.weekdays_star AND NOT schedule.days_star THEN
        SELECT max(month_days[mo]) INTO longest FROM unnest(schedule.months) AS mo;
        IF schedule.days[1] > longest THEN
            error := format('day-of-month %s never occurs in month %s', fields[3], fields[4]);
        END IF;
    END IF;
    IF error IS NOT NULL THEN
        schedule := NULL;
        error := format('Invalid cron expression ''%s'': %s', expr, error);
    END IF;
END
$$;

-- The error message of an invalid expression, NULL for a valid one.
CREATE FUNCTION df._cron_error(expr text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (df._cron_try_parse(expr)).error
$$;

-- Parse an expression or raise `Invalid cron expression '<expr>': <reason>`.
CREATE FUNCTION df._cron_parse(expr text) RETURNS df._cron_schedule
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record := df._cron_try_parse(expr);
BEGIN
    IF r.error IS NOT NULL THEN
        RAISE EXCEPTION '%', r.error USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN r.schedule;
END
$$;

-- Raise unless `tz` is a time zone name PostgreSQL knows (trapping PostgreSQL's error takes
-- a subtransaction, so this and its callers are not parallel safe). Only names shaped like
-- the tz database's are taken — letters, _ - / — plus its few names with digits (Etc/GMT+5,
-- GMT0, EST5EDT…): PostgreSQL would also read '+05', 'UTC+5' or 'ABC5DEF' as POSIX rules,
-- whose offsets count west of Greenwich. (An abbreviation such as CET or EST passes, and
-- means a fixed offset without daylight saving time.)
CREATE FUNCTION df._cron_check_timezone(tz text, what text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tz ~* '^([a-z][a-z_/-]*|Etc/GMT[+-]?[0-9]{1,2}|GMT[+-]?0|EST5EDT|CST6CDT|MST7MDT|PST8PDT)$' THEN
        BEGIN
            PERFORM timezone(tz, statement_timestamp());
            RETURN tz;
        EXCEPTION WHEN invalid_parameter_value THEN
            NULL;
        END;
    END IF;
    RAISE EXCEPTION '%unknown time zone ''%'' (expected a time zone name such as UTC or Europe/Berlin)',
        what, coalesce(tz, 'NULL') USING ERRCODE = 'invalid_parameter_value';
END
$$;

-- The time zone of schedules: the setting pg_durable.cron_timezone, UTC when unset or empty.
CREATE FUNCTION df._cron_timezone() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tz text := current_setting('pg_durable.cron_timezone', true);
BEGIN
    IF tz IS NULL OR tz = '' THEN
        RETURN 'UTC';
    END IF;
    RETURN df._cron_check_timezone(tz, 'pg_durable.cron_timezone: ');
END
$$;

-- The first wall-clock minute at or after `start` (a whole minute) that the schedule
-- matches, searched through the start month and the 96 months after it (any date a valid
-- expression names occurs within 8 years: February 29th of 2096 is followed by that of
-- 2104). Months that do not match are skipped whole, then days, then hours: never minute by
-- minute. NULL if nothing matches in that window (which a parsed expression rules out).
CREATE FUNCTION df._cron_next_local(s df._cron_schedule, start timestamp) RETURNS timestamp
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    y      int := extract(year FROM start);
    mo     int := extract(month FROM start);
    d      int := extract(day FROM start);
    h      int := extract(hour FROM start);
    mi     int := extract(minute FROM start);
    dom_ok boolean[] := array_fill(false, ARRAY[31]);
    dow_ok boolean[] := array_fill(false, ARRAY[7], ARRAY[0]);
    -- Standard cron: with both day fields restricted a day matches either; with one of them
    -- `*`, only the other one counts.
    use_dom boolean := NOT s.days_star OR s.weekdays_star;
    use_dow boolean := NOT s.weekdays_star OR s.days_star;
    first_dow int;
    ndays  int;
    hh     int;
    mm     int;
    k      int;
BEGIN
    FOREACH k IN ARRAY s.days LOOP dom_ok[k] := true; END LOOP;
    FOREACH k IN ARRAY s.weekdays LOOP dow_ok[k] := true; END LOOP;
    FOR step IN 0 .. 96 LOOP
        IF mo = ANY (s.months) THEN
            first_dow := extract(dow FROM make_date(y, mo, 1));
            ndays := extract(day FROM make_date(y, mo, 1) + interval '1 month' - interval '1 day');
            WHILE d <= ndays LOOP
                IF (use_dom AND dom_ok[d]) OR (use_dow AND dow_ok[(first_dow + d - 1) % 7]) THEN
                    FOREACH hh IN ARRAY s.hours LOOP
                        CONTINUE WHEN hh < h;
                        FOREACH mm IN ARRAY s.minutes LOOP
                            IF hh > h OR mm >= mi THEN
                                RETURN make_timestamp(y, mo, d, hh, mm, 0);
                            END IF;
                        END LOOP;
                    END LOOP;
                END IF;
                d := d + 1; h := 0; mi := 0;
            END LOOP;
        END IF;
        mo := mo + 1;
        IF mo > 12 THEN
            mo := 1; y := y + 1;
        END IF;
        d := 1; h := 0; mi := 0;
    END LOOP;
    RETURN NULL;
END
$$;

-- The instant a wall-clock minute fires in `tz`: the first instant whose local time is at or
-- after it. For an ordinary time that is its only occurrence; for a time that occurs twice
-- (fall back) the first occurrence — PostgreSQL's own reading is the second; for a time that
-- does not exist (spring forward) the first instant after the gap, i.e. the transition.
CREATE FUNCTION df._cron_instant(wall timestamp, tz text) RETURNS timestamptz
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t          timestamptz := timezone(tz, wall);
    -- The UTC offsets a little before and after (no zone changes twice within 3 hours, and
    -- no transition moves the clock by more than 2 hours).
    off_before interval := timezone(tz, t - interval '3 hours') - timezone('UTC', t - interval '3 hours');
    off_after  interval := timezone(tz, t + interval '3 hours') - timezone('UTC', t + interval '3 hours');
    early      timestamptz := timezone('UTC', wall - off_before);
    lo         timestamptz;
    hi         timestamptz;
    mid        timestamptz;
BEGIN
    IF early < t AND timezone(tz, early) = wall THEN
        RETURN early;
    END IF;
    IF timezone(tz, t) = wall THEN
        RETURN t;
    END IF;
    -- In a gap: the transition lies in (wall - off_after, wall - off_before]; find it to the
    -- second (transitions fall on whole seconds).
    lo := timezone('UTC', wall - off_after);
    hi := timezone('UTC', wall - off_before);
    WHILE hi - lo > interval '1 second' LOOP
        mid := lo + date_trunc('second', (hi - lo) / 2);
        IF timezone(tz, mid) >= wall THEN
            hi := mid;
        ELSE
            lo := mid;
        END IF;
    END LOOP;
    RETURN hi;
END
$$;

-- The next time the expression fires strictly after `after`, evaluated in wall-clock time of
-- `tz` (see df._cron_instant for the two daylight-saving transitions). The worker calls
-- df._cron_next(cron_expr, now(), df._cron_timezone()) when a WAIT_SCHEDULE node runs.
CREATE FUNCTION df._cron_next(expr text, after timestamptz, tz text) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s    df._cron_schedule;
    wall timestamp;
    fire timestamptz;
    lo   timestamptz;
    hi   timestamptz;
    mid  timestamptz;
BEGIN
    IF expr IS NULL OR after IS NULL OR tz IS NULL THEN
        RAISE EXCEPTION 'df._cron_next: expr, after and tz must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT isfinite(after) THEN
        RAISE EXCEPTION 'df._cron_next: after must be a finite time, not %', after
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    s := df._cron_parse(expr);
    PERFORM df._cron_check_timezone(tz, '');
    wall := date_trunc('minute', timezone(tz, after)) + interval '1 minute';
    wall := df._cron_next_local(s, wall);
    IF wall IS NULL THEN   -- not for a parsed expression, short of the end of the calendar
        RAISE EXCEPTION 'cron expression ''%'' has no time to fire within 8 years after %', expr, after;
    END IF;
    fire := df._cron_instant(wall, tz);
    IF fire > after THEN
        RETURN fire;
    END IF;
    -- `after` is in the repeated hour of a fall back, and `wall` fired the first time round —
    -- as did every wall-clock minute the clock showed before it went back. Find that moment
    -- (the transition lies in (fire, after]; to the second) and go on from where the clock
    -- had got to then: that minute has not fired yet, and fires after `after`.
    lo := fire;
    hi := after;
    WHILE hi - lo > interval '1 second' LOOP
        mid := lo + date_trunc('second', (hi - lo) / 2);
        IF timezone(tz, mid) - timezone('UTC', mid) = timezone(tz, after) - timezone('UTC', after) THEN
            hi := mid;
        ELSE
            lo := mid;
        END IF;
    END LOOP;
    wall := date_trunc('minute', timezone(tz, lo) + (hi - lo) + interval '1 minute' - interval '1 microsecond');
    RETURN df._cron_instant(df._cron_next_local(s, wall), tz);
END
$$;

-- -------------------------------------------------------------------------------------------
-- The constructor (SPEC §1.3).

CREATE FUNCTION df.wait_for_schedule(cron_expr text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM df._cron_parse(cron_expr);
    RETURN df._node('WAIT_SCHEDULE', query => '{"cron_expr":' || to_json(cron_expr)::text || '}');
END
$$;
