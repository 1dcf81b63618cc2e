-- The catalog queries of the SQL reference (pg_durable/reference.py), as named blocks.
-- Public means: in schema df (or, for operators, implemented by a function of df) and not
-- named with a leading underscore, which marks the engine's own objects.

-- name: functions
-- Every public df function, with who may execute it: PUBLIC, and the probe roles that
-- df.grant_usage gave usage, usage with include_http, and usage with with_grant.
SELECT p.proname::text,
       p.oid::regprocedure::text,
       pg_catalog.pg_get_function_arguments(p.oid),
       pg_catalog.pg_get_function_result(p.oid),
       p.prokind::text,
       p.provolatile::text,
       p.proisstrict,
       p.prosecdef,
       pg_catalog.obj_description(p.oid, 'pg_proc'),
       pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE'),
       pg_catalog.has_function_privilege(%(granted)s, p.oid, 'EXECUTE'),
       pg_catalog.has_function_privilege(%(http)s, p.oid, 'EXECUTE'),
       pg_catalog.has_function_privilege(%(admin)s, p.oid, 'EXECUTE')
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'df' AND p.proname !~ '^_'
 ORDER BY p.proname, p.pronargs, 2;

-- name: operators
SELECT o.oprname::text,
       CASE WHEN o.oprleft = 0 THEN NULL ELSE o.oprleft::regtype::text END,
       o.oprright::regtype::text,
       o.oprresult::regtype::text,
       p.proname::text,
       pg_catalog.obj_description(o.oid, 'pg_operator')
  FROM pg_catalog.pg_operator o
  JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'df'
 ORDER BY o.oprname, o.oprleft;

-- name: relations
SELECT c.relname::text,
       c.relkind::text,
       c.relrowsecurity,
       pg_catalog.obj_description(c.oid, 'pg_class')
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'df' AND c.relname !~ '^_' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
 ORDER BY c.relname;

-- name: columns
SELECT c.relname::text,
       a.attname::text,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       pg_catalog.col_description(c.oid, a.attnum)
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'df' AND c.relname !~ '^_' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname, a.attnum;

-- name: relation_privileges
-- Per public relation and privilege: whether the probe role given df usage holds it on the
-- whole relation, else on which columns (INSERT and UPDATE are granted column by column).
SELECT c.relname::text,
       pr.privilege,
       pg_catalog.has_table_privilege(%(granted)s, c.oid, pr.privilege),
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                AND CASE WHEN pr.privilege = 'DELETE' THEN false  -- no column privilege
                         ELSE pg_catalog.has_column_privilege(%(granted)s, c.oid, a.attnum,
                                                              pr.privilege) END
              ORDER BY a.attnum),
       pg_catalog.has_table_privilege('public', c.oid, pr.privilege)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) WITH ORDINALITY AS pr(privilege, i)
 WHERE n.nspname = 'df' AND c.relname !~ '^_' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
 ORDER BY c.relname, pr.i;

-- name: installed
SELECT to_regnamespace('df') IS NOT NULL;
