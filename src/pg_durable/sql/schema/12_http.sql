-- pg_durable: HTTP steps — df.http and df.http_multipart (SPEC §1.3, §2.1, §3.3), and the
-- egress policy they and the worker share.
--
-- Where pg_durable has a build flag, we have server settings (SPEC "Where we deliberately
-- differ" #10), read with current_setting(name, true):
--
--   pg_durable.http_policy               off (default) | allow-list | allow-all
--   pg_durable.http_allowed_hosts        allow-list: host names and .suffixes, comma-separated
--   pg_durable.http_max_timeout_seconds  largest timeout_seconds a step may ask for (300)
--   pg_durable.http_max_request_bytes    largest request body (multipart: the decoded parts;
--                                        10 MiB); a size such as '10MB' is accepted too
--
-- Every rule lives here once. The constructors check a step's config with
-- df._http_config_error, and df.start does the same for a hand-built HTTP node (df._flatten,
-- 20_start.sql), so both say the same thing; both then store the config as
-- df._http_config_text writes it. The worker asks the same functions, on its own connection,
-- before each request (df._http_request_error: policy, privilege, scheme, allow-list), so what
-- SQL accepts and what the worker lets out are decided by one text of rules and read from one
-- setting. A session can SET the policy for itself: that only changes what the constructors
-- accept in that session; the worker's own value is the one that lets requests out.

-- -------------------------------------------------------------------------------------------
-- Settings

-- The effective policy: 'off', 'allow-list' or 'allow-all'. Unset or empty is 'off'.
CREATE FUNCTION df._http_policy() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    raw    text := current_setting('pg_durable.http_policy', true);
    policy text := lower(btrim(coalesce(raw, ''), E' \t\r\n'));
BEGIN
    IF policy = '' THEN
        RETURN 'off';
    END IF;
    IF policy NOT IN ('off', 'allow-list', 'allow-all') THEN
        RAISE EXCEPTION 'invalid value for parameter "pg_durable.http_policy": "%". Valid values are off, allow-list and allow-all.',
            raw
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN policy;
END
$$;

-- A positive whole-number setting, or `fallback` when unset. `size`: a byte count, which may
-- also be written with a unit ('10MB', as pg_size_bytes reads it).
-- Functions that trap an error (a subtransaction) are not PARALLEL SAFE: a parallel operation
-- cannot start one.
CREATE FUNCTION df._http_limit(name text, fallback bigint, size boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    raw text := btrim(coalesce(current_setting(name, true), ''));
    v   numeric;
BEGIN
    IF raw = '' THEN
        RETURN fallback;
    END IF;
    IF raw ~ '^[0-9]{1,18}$' THEN
        v := raw::numeric;
    ELSIF size THEN
        BEGIN
            v := pg_size_bytes(raw);
        EXCEPTION WHEN invalid_parameter_value OR numeric_value_out_of_range THEN
            v := NULL;
        END;
    END IF;
    IF v IS NULL OR v < 1 THEN
        RAISE EXCEPTION 'invalid value for parameter "%": "%". Expected a positive whole number%, default %.',
            name, raw, CASE WHEN size THEN ' of bytes (or a size such as 10MB)' ELSE '' END, fallback
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v;
END
$$;

-- pg_durable.http_allowed_hosts as a list of lower-case entries: exact host names, and
-- suffixes that start with a dot. An entry that is neither (an IP address, a URL, a port, a
-- wildcard) is an error naming the setting, rather than an entry that silently never matches.
CREATE FUNCTION df._http_allowed_hosts() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entry text;
    hosts text[] := '{}';
BEGIN
    FOREACH entry IN ARRAY string_to_array(coalesce(current_setting('pg_durable.http_allowed_hosts', true), ''), ',') LOOP
        entry := lower(btrim(entry, E' \t\r\n'));
        CONTINUE WHEN entry = '';
        IF entry !~ '^\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*$' OR df._http_is_ip_literal(ltrim(entry, '.')) THEN
            RAISE EXCEPTION 'invalid entry "%" in pg_durable.http_allowed_hosts: expected a host name (api.example.com) or a suffix starting with a dot (.example.com); IP addresses are never allowed',
                entry
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        hosts := hosts || entry;
    END LOOP;
    RETURN hosts;
END
$$;

-- -------------------------------------------------------------------------------------------
-- URLs and hosts (SPEC §3.3 steps 2 and 3)

-- The host of a URL, as SPEC §3.3 step 3 finds it: the authority (after '://', up to the first
-- '/', '?' or '#'), after its last '@', without the port, IPv6 brackets removed, lower-cased.
-- NULL without '://'. An unbracketed authority with several ':' is kept whole (it can only be
-- an IPv6 address, which is then refused as one).
CREATE FUNCTION df._http_url_host(url text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p    int := strpos(url, '://');
    auth text;
BEGIN
    IF p = 0 THEN
        RETURN NULL;
    END IF;
    auth := substring(substr(url, p + 3) FROM '^[^/?#]*');
    auth := regexp_replace(auth, '^.*@', '');
    IF left(auth, 1) = '[' THEN
        RETURN lower(split_part(substr(auth, 2), ']', 1));
    END IF;
    IF auth ~ ':.*:' THEN
        RETURN lower(auth);
    END IF;
    RETURN lower(split_part(auth, ':', 1));
END
$$;

-- Whether a host is an IP address literal: any IPv6 form (a ':'), or a name whose last label
-- is a number, as URL parsers and inet_aton read it (127.0.0.1, 2130706433, 0x7f.1, 127.1).
CREATE FUNCTION df._http_is_ip_literal(host text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(strpos(host, ':') > 0
                    OR regexp_replace(rtrim(lower(host), '.'), '^.*\.', '') ~ '^(0x[0-9a-f]*|[0-9]+)$',
                    false)
$$;

-- The allow-list rule (SPEC §3.3 step 3), whatever the policy: the host (lower-cased) equals
-- an exact entry, or ends with a .suffix entry and has at least one label before it
-- (api.example.com matches .example.com; example.com and evilexample.com do not). Never
-- allowed: IP literals, an empty host, a trailing dot (example.com.), anything that is not a
-- plain host name (percent-escapes, spaces, non-ASCII).
CREATE FUNCTION df._http_host_allowed(host text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h     text := lower(host);
    entry text;
BEGIN
    IF h IS NULL OR h !~ '^[a-z0-9_-]+(\.[a-z0-9_-]+)*$' OR df._http_is_ip_literal(h) THEN
        RETURN false;
    END IF;
    FOREACH entry IN ARRAY df._http_allowed_hosts() LOOP
        IF left(entry, 1) = '.' THEN
            -- (h is labels joined by single dots, so what precedes the suffix is a label.)
            IF length(h) > length(entry) AND right(h, length(entry)) = entry THEN
                RETURN true;
            END IF;
        ELSIF h = entry THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$$;

-- What is wrong with a URL, or NULL: missing, a scheme other than http/https (SPEC §3.3
-- step 2: the text before '://', lower-cased), control characters (a CR/LF would end the
-- request line). `template`: the URL of a step being built, whose scheme a reference may still
-- provide — the scheme is not checked when the text that gives it contains '{' or '$'.
-- (pg_durable skips the check whenever the URL contains '{'; a literal scheme followed by a
-- placeholder is checked here, as it would fail anyway.)
CREATE FUNCTION df._http_url_error(url text, template boolean) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p int := strpos(url, '://');
BEGIN
    IF coalesce(url, '') = '' THEN
        RETURN 'url is required and cannot be NULL or empty';
    END IF;
    IF NOT (template AND (CASE WHEN p > 0 THEN left(url, p - 1) ELSE url END) ~ '[{$]') THEN
        IF p = 0 THEN
            RETURN format('Invalid URL ''%s'': it must start with http:// or https://',
                          CASE WHEN length(url) > 100 THEN left(url, 97) || '...' ELSE url END);
        END IF;
        IF lower(left(url, p - 1)) NOT IN ('http', 'https') THEN
            RETURN format('Blocked: unsupported URL scheme ''%s''. Only http and https are allowed.',
                          lower(left(url, p - 1)));
        END IF;
    END IF;
    IF url ~ '[\x01-\x1f\x7f]' THEN
        RETURN 'url must not contain control characters (CR, LF, TAB, ...)';
    END IF;
    RETURN NULL;
END
$$;

-- The privilege check (SPEC §3.3 step 1), or NULL when `role` may make the request: EXECUTE
-- on df.http (HTTP) or df.http_multipart (HTTP_MULTIPART); superusers always may.
CREATE FUNCTION df._http_privilege_error(node_type text, role regrole) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fn  text := CASE WHEN node_type = 'HTTP_MULTIPART' THEN 'df.http_multipart' ELSE 'df.http' END;
    sig text := CASE WHEN node_type = 'HTTP_MULTIPART'
                     THEN 'df.http_multipart(text,text,jsonb,jsonb,integer)'
                     ELSE 'df.http(text,text,text,jsonb,integer)' END;
    r   record;
BEGIN
    SELECT a.rolname, a.rolsuper INTO r FROM pg_roles a WHERE a.oid = role::oid;
    IF NOT FOUND THEN
        RETURN format('Blocked: role %s does not exist, so it cannot make HTTP requests.',
                      coalesce(role::oid::text, 'NULL'));
    END IF;
    IF r.rolsuper THEN
        RETURN NULL;
    END IF;
    IF to_regprocedure(sig) IS NOT NULL AND has_function_privilege(role::oid, sig, 'EXECUTE') THEN
        RETURN NULL;
    END IF;
    RETURN format('Blocked: role ''%s'' does not have EXECUTE privilege on %s(). Grant EXECUTE ON FUNCTION %s TO %s to allow HTTP requests.',
                  r.rolname, fn, sig, quote_ident(r.rolname));
END
$$;

-- What the worker asks before each request (the policy, then SPEC §3.3 steps 1–3; a URL with
-- control characters is refused too), given the URL after substitution: NULL when the request may go out, else the reason it is blocked,
-- which fails the node. `host`: the host the worker's own URL parser found, so that the host
-- checked is the host connected to; NULL → df._http_url_host(url). An invalid setting raises.
-- Step 4 (the addresses DNS gives, unless the policy is allow-all) is the worker's.
CREATE FUNCTION df._http_request_error(node_type text, role regrole, url text,
                                       host text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    policy text := df._http_policy();
    err    text;
    h      text;
BEGIN
    IF policy = 'off' THEN
        RETURN 'Blocked: outbound HTTP requests are disabled. Set pg_durable.http_policy to ''allow-list'' (with pg_durable.http_allowed_hosts) or ''allow-all'' to enable them.';
    END IF;
    err := coalesce(df._http_privilege_error(node_type, role), df._http_url_error(url, false));
    IF err IS NOT NULL THEN
        RETURN err;
    END IF;
    IF policy = 'allow-all' THEN
        RETURN NULL;
    END IF;
    h := lower(coalesce(host, df._http_url_host(url)));
    IF df._http_is_ip_literal(h) THEN
        RETURN 'Blocked: requests to bare IP addresses are not permitted. Use a host name listed in pg_durable.http_allowed_hosts instead.';
    END IF;
    IF NOT df._http_host_allowed(h) THEN
        RETURN format('Blocked: ''%s'' is not in the allowed endpoint list. Only requests to the hosts listed in pg_durable.http_allowed_hosts are permitted.',
                      coalesce(h, ''));
    END IF;
    RETURN NULL;
END
$$;

-- -------------------------------------------------------------------------------------------
-- Step configs (SPEC §2.1)

-- What is wrong with an HTTP or HTTP_MULTIPART config, or NULL. The config is a JSON object
-- (the constructors' arguments, or a hand-built node's query); a missing or null method,
-- body, headers or timeout_seconds takes the constructors' default (POST, none, none, 30).
-- References to variables and results ({var}, $name) are left for the worker to substitute:
-- a URL whose scheme is one is not checked, a data_b64 that is one is not decoded.
CREATE FUNCTION df._http_config_error(kind text, cfg jsonb) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tchar    constant text := '[!#$%&''*+.^_`|~0-9A-Za-z-]';
    method   text;
    timeout  numeric;
    max_time bigint;
    max_size bigint;
    size     bigint := 0;
    h        record;
    p        record;
    seen     text[] := '{}';
    pname    text;
    v        text;
    err      text;
BEGIN
    IF jsonb_typeof(cfg) IS DISTINCT FROM 'object' THEN
        RETURN 'query in ' || kind || ' must be a JSON config object';
    END IF;

    -- url (NULL or empty: the scheme check says so)
    IF coalesce(jsonb_typeof(cfg->'url'), 'null') NOT IN ('null', 'string') THEN
        RETURN 'url must be a JSON string';
    END IF;
    err := df._http_url_error(cfg->>'url', true);
    IF err IS NOT NULL THEN
        RETURN err;
    END IF;

    -- method
    IF coalesce(jsonb_typeof(cfg->'method'), 'null') <> 'null' THEN
        method := upper(CASE WHEN jsonb_typeof(cfg->'method') = 'string' THEN cfg->>'method'
                             ELSE (cfg->'method')::text END);
        IF kind = 'HTTP' AND method NOT IN ('GET', 'POST', 'PUT', 'DELETE', 'PATCH') THEN
            RETURN format('Invalid HTTP method: %s. Must be GET, POST, PUT, DELETE, or PATCH', method);
        END IF;
        IF kind = 'HTTP_MULTIPART' AND method NOT IN ('POST', 'PUT', 'PATCH') THEN
            RETURN format('Invalid HTTP method for multipart: %s. Must be POST, PUT, or PATCH', method);
        END IF;
    END IF;

    -- timeout_seconds
    IF coalesce(jsonb_typeof(cfg->'timeout_seconds'), 'null') <> 'null' THEN
        IF jsonb_typeof(cfg->'timeout_seconds') <> 'number' THEN
            RETURN 'timeout_seconds must be a whole number of seconds';
        END IF;
        timeout := (cfg->'timeout_seconds')::numeric;
        IF timeout <= 0 THEN
            RETURN 'Timeout must be positive';
        END IF;
        IF timeout <> trunc(timeout) THEN
            RETURN 'timeout_seconds must be a whole number of seconds';
        END IF;
        max_time := df._http_limit('pg_durable.http_max_timeout_seconds', 300);
        IF timeout > max_time THEN
            RETURN format('Timeout of %s seconds exceeds pg_durable.http_max_timeout_seconds (%s); use a shorter timeout, or raise the setting',
                          timeout, max_time);
        END IF;
    END IF;

    -- body / parts
    IF kind = 'HTTP' THEN
        IF coalesce(jsonb_typeof(cfg->'body'), 'null') NOT IN ('null', 'string') THEN
            RETURN 'body must be a JSON string or null';
        END IF;
        size := coalesce(octet_length(cfg->>'body'), 0);
    ELSE
        IF coalesce(jsonb_typeof(cfg->'parts'), 'null') = 'null' THEN
            RETURN 'parts is required and cannot be NULL';
        END IF;
        IF jsonb_typeof(cfg->'parts') <> 'array' THEN
            RETURN 'parts must be a JSON array of part objects';
        END IF;
        IF jsonb_array_length(cfg->'parts') = 0 THEN
            RETURN 'parts must contain at least one part';
        END IF;
        FOR p IN SELECT e.value AS part, e.ord - 1 AS i
                   FROM jsonb_array_elements(cfg->'parts') WITH ORDINALITY AS e(value, ord) LOOP
            IF jsonb_typeof(p.part) <> 'object' THEN
                RETURN format('parts[%s] must be a JSON object {"name": …, "data_b64": …}', p.i);
            END IF;
            IF jsonb_typeof(p.part->'name') IS DISTINCT FROM 'string' OR p.part->>'name' = '' THEN
                RETURN format('parts[%s]: name is required and must be a non-empty string', p.i);
            END IF;
            pname := p.part->>'name';
            IF pname ~ '[\r\n]' THEN
                RETURN format('parts[%s]: name must not contain CR or LF characters', p.i);
            END IF;
            IF jsonb_typeof(p.part->'data_b64') IS DISTINCT FROM 'string' THEN
                RETURN format('parts[%s] (''%s''): data_b64 is required and must be a string of base64',
                              p.i, pname);
            END IF;
            IF coalesce(jsonb_typeof(p.part->'filename'), 'null') NOT IN ('null', 'string') THEN
                RETURN format('parts[%s] (''%s''): filename must be a string', p.i, pname);
            END IF;
            IF p.part->>'filename' ~ '[\r\n]' THEN
                RETURN format('parts[%s] (''%s''): filename must not contain CR or LF characters',
                              p.i, pname);
            END IF;
            IF coalesce(jsonb_typeof(p.part->'content_type'), 'null') NOT IN ('null', 'string') THEN
                RETURN format('parts[%s] (''%s''): content_type must be a string', p.i, pname);
            END IF;
            v := p.part->>'content_type';
            IF v ~ '[\r\n]' OR v !~ ('^' || tchar || '+/' || tchar || '+(\s*;.*)?$') THEN
                RETURN format('parts[%s] (''%s''): invalid content_type ''%s'': expected type/subtype, such as application/pdf',
                              p.i, pname, v);
            END IF;
            v := btrim(p.part->>'data_b64', E' \t\r\n');
            -- A whole reference ($r, $r?, $r.col, $r.col?, {var}) is substituted at execution.
            CONTINUE WHEN v ~ '^\$[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\??$'
                       OR v ~ '^\{[A-Za-z_][A-Za-z0-9_]*\}$';
            IF v ~ '[{$]' THEN
                RETURN format('data_b64 for part ''%s'' mixes a variable reference with other text. Only a whole-value reference is supported (e.g. data_b64 => ''$result'' or ''{myvar}''), because splicing into base64 would corrupt the payload.',
                              pname);
            END IF;
            BEGIN
                size := size + octet_length(decode(v, 'base64'));
            EXCEPTION WHEN invalid_parameter_value THEN
                RETURN format('Invalid base64 in part ''%s'': %s', pname, SQLERRM);
            END;
        END LOOP;
    END IF;

    -- headers
    IF coalesce(jsonb_typeof(cfg->'headers'), 'null') <> 'null' THEN
        IF jsonb_typeof(cfg->'headers') <> 'object' THEN
            RETURN 'headers must be a JSON object of header names and string values';
        END IF;
        FOR h IN SELECT e.key, e.value FROM jsonb_each(cfg->'headers') AS e
                  ORDER BY e.key COLLATE "C" LOOP
            IF h.key !~ ('^' || tchar || '+$') THEN
                RETURN format('Invalid HTTP header name ''%s'': a header name is one or more letters, digits and !#$%%&''*+-.^_`|~',
                              h.key);
            END IF;
            IF lower(h.key) IN ('host', 'content-length', 'transfer-encoding', 'connection',
                                'keep-alive', 'upgrade', 'te', 'trailer', 'expect')
               OR lower(h.key) LIKE 'proxy-%' THEN
                RETURN format('HTTP header ''%s'' cannot be set: the HTTP client sets it itself. Headers that cannot be set: Host, Content-Length, Transfer-Encoding, Connection, Keep-Alive, Upgrade, TE, Trailer, Expect and Proxy-*',
                              h.key);
            END IF;
            IF lower(h.key) = ANY (seen) THEN
                RETURN format('HTTP header ''%s'' is given twice (header names are case-insensitive)',
                              h.key);
            END IF;
            seen := seen || lower(h.key);
            IF kind = 'HTTP_MULTIPART' AND lower(h.key) = 'content-type' THEN
                RETURN format('HTTP header ''%s'' cannot be set on a multipart request: the HTTP client sets it, with the boundary between the parts',
                              h.key);
            END IF;
            IF jsonb_typeof(h.value) <> 'string' THEN
                RETURN format('HTTP header ''%s'' has a %s value; header values must be JSON strings',
                              h.key, jsonb_typeof(h.value));
            END IF;
            IF h.value #>> '{}' ~ '[\r\n]' THEN
                RETURN format('HTTP header ''%s'': the value must not contain CR or LF characters', h.key);
            END IF;
        END LOOP;
    END IF;

    max_size := df._http_limit('pg_durable.http_max_request_bytes', 10485760, true);
    IF size > max_size THEN
        RETURN format('HTTP request body is %s bytes, more than pg_durable.http_max_request_bytes (%s); send less data per request, or raise the setting',
                      size, max_size);
    END IF;
    RETURN NULL;
END
$$;

-- A config df._http_config_error accepts, as the text stored in the node's query (SPEC §2.1):
-- compact JSON, fields in pg_durable's order — HTTP {"url","method","body","headers",
-- "timeout_seconds"}, HTTP_MULTIPART {"url","method","parts","headers","timeout_seconds"} —
-- with the method upper-cased, defaults filled in, header names in byte order (as serde_json
-- keeps a map), each part as {"name","data_b64"[,"filename"][,"content_type"]} and unknown
-- fields dropped. So a step reads the same whether the DSL built it or a hand did.
CREATE FUNCTION df._http_config_text(kind text, cfg jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '{"url":' || to_json(cfg->>'url')::text
        || ',"method":' || to_json(upper(coalesce(cfg->>'method', 'POST')))::text
        || CASE WHEN kind = 'HTTP'
                THEN ',"body":' || coalesce(to_json(cfg->>'body')::text, 'null')
                ELSE ',"parts":['
                     || (SELECT string_agg('{"name":' || to_json(e.part->>'name')::text
                                           || ',"data_b64":' || to_json(e.part->>'data_b64')::text
                                           || coalesce(',"filename":' || to_json(e.part->>'filename')::text, '')
                                           || coalesce(',"content_type":' || to_json(e.part->>'content_type')::text, '')
                                           || '}',
                                           ',' ORDER BY e.ord)
                           FROM jsonb_array_elements(cfg->'parts') WITH ORDINALITY AS e(part, ord))
                     || ']'
           END
        || ',"headers":'
        || CASE WHEN jsonb_typeof(cfg->'headers') = 'object'
                THEN '{' || coalesce((SELECT string_agg(to_json(e.key)::text || ':'
                                                        || to_json(e.value #>> '{}')::text,
                                                        ',' ORDER BY e.key COLLATE "C")
                                        FROM jsonb_each(cfg->'headers') AS e), '') || '}'
                ELSE 'null'
           END
        || ',"timeout_seconds":' || coalesce((cfg->>'timeout_seconds')::numeric::bigint::text, '30')
        || '}'
$$;

-- A constructor's envelope: the policy first (off → SPEC's "disabled" error; allow-list →
-- its host list must read), then the config's rules.
CREATE FUNCTION df._http_envelope(kind text, cfg jsonb) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    policy text := df._http_policy();
    hosts  text[];
    err    text;
BEGIN
    IF policy = 'off' THEN
        RAISE EXCEPTION 'df.http() is disabled. Set pg_durable.http_policy to ''allow-list'' (with pg_durable.http_allowed_hosts) or ''allow-all'' to enable outbound HTTP requests.';
    END IF;
    IF policy = 'allow-list' THEN
        hosts := df._http_allowed_hosts();   -- (an invalid entry is reported now)
    END IF;
    err := df._http_config_error(kind, cfg);
    IF err IS NOT NULL THEN
        RAISE EXCEPTION '%', err;
    END IF;
    RETURN df._node(kind, query => df._http_config_text(kind, cfg));
END
$$;

-- -------------------------------------------------------------------------------------------
-- Constructors (SPEC §1.3). NULL for method or timeout_seconds means their default. Not
-- IMMUTABLE like the other leaf constructors: they read the settings.

CREATE FUNCTION df.http(url text, method text DEFAULT 'POST', body text DEFAULT NULL,
                        headers jsonb DEFAULT NULL, timeout_seconds int DEFAULT 30)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df._http_envelope('HTTP', jsonb_build_object('url', url, 'method', method,
                                                        'body', body, 'headers', headers,
                                                        'timeout_seconds', timeout_seconds));
END
$$;

CREATE FUNCTION df.http_multipart(url text, method text DEFAULT 'POST', parts jsonb DEFAULT NULL,
                                  headers jsonb DEFAULT NULL, timeout_seconds int DEFAULT 30)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df._http_envelope('HTTP_MULTIPART',
                             jsonb_build_object('url', url, 'method', method, 'parts', parts,
                                                'headers', headers,
                                                'timeout_seconds', timeout_seconds));
END
$$;

-- EXECUTE on these is the HTTP privilege (SPEC §1.1, §3.2): df.grant_usage(role,
-- include_http => true) grants it, and the worker checks it again before each request.
REVOKE ALL ON FUNCTION df.http(text, text, text, jsonb, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION df.http_multipart(text, text, jsonb, jsonb, integer) FROM PUBLIC;
