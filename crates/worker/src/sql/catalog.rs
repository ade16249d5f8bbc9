//! The catalog query that builds a tenant's schema cache (see
//! [`crate::schema`]): tables, views, columns, keys, foreign keys,
//! functions and time zones of the exposed schemas (`$1`, text[]), as one
//! JSON document built in Postgres.

/// The schema cache's one catalog query.
pub const LOAD: &str = r#"
WITH view_deps AS (
  SELECT v.oid AS view, r.ev_action::text AS action, d.refobjid AS oid, d.refobjsubid AS num
  FROM pg_class v
  JOIN pg_namespace vn ON vn.oid = v.relnamespace
  JOIN pg_rewrite r ON r.ev_class = v.oid AND r.rulename = '_RETURN'
  JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
    AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 AND d.refobjid <> v.oid
  WHERE vn.nspname = ANY($1) AND v.relkind IN ('v', 'm')
)
SELECT json_build_object(
  'tables', coalesce((
    SELECT json_agg(json_build_object(
      'schema', n.nspname,
      'name', c.relname,
      'view', c.relkind IN ('v', 'm'),
      'insertable', c.relkind IN ('r', 'p') OR (c.relkind IN ('v', 'f') AND (pg_relation_is_updatable(c.oid::regclass, true) & 8) = 8),
      'updatable', c.relkind IN ('r', 'p') OR (c.relkind IN ('v', 'f') AND (pg_relation_is_updatable(c.oid::regclass, true) & 4) = 4),
      'deletable', c.relkind IN ('r', 'p') OR (c.relkind IN ('v', 'f') AND (pg_relation_is_updatable(c.oid::regclass, true) & 16) = 16),
      'columns', coalesce((
        SELECT json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                                          'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END) ORDER BY a.attnum)
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
      'pk', coalesce((
        SELECT json_agg(a.attname ORDER BY k.i)
        FROM pg_constraint con, unnest(con.conkey) WITH ORDINALITY k(n, i), pg_attribute a
        WHERE con.conrelid = c.oid AND con.contype = 'p' AND a.attrelid = c.oid AND a.attnum = k.n), '[]')))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'v', 'm', 'f', 'p')), '[]'),
  'fks', coalesce((
    SELECT json_agg(json_build_object(
      'name', con.conname,
      'schema', ns.nspname, 'table', cl.relname,
      'columns', (SELECT json_agg(a.attname ORDER BY k.i) FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
                  JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n),
      'ref_schema', nf.nspname, 'ref_table', cf.relname,
      'ref_columns', (SELECT json_agg(a.attname ORDER BY k.i) FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n),
      'one_to_one', EXISTS (
        SELECT 1 FROM pg_constraint u
        WHERE u.conrelid = con.conrelid AND u.contype IN ('p', 'u')
          AND (SELECT array_agg(x ORDER BY x) FROM unnest(u.conkey) x) = (SELECT array_agg(x ORDER BY x) FROM unnest(con.conkey) x)))
      ORDER BY con.oid)
    FROM pg_constraint con
    JOIN pg_class cl ON cl.oid = con.conrelid JOIN pg_namespace ns ON ns.oid = cl.relnamespace
    JOIN pg_class cf ON cf.oid = con.confrelid JOIN pg_namespace nf ON nf.oid = cf.relnamespace
    WHERE con.contype = 'f' AND con.conparentid = 0
      AND (ns.nspname = ANY($1) OR nf.nspname = ANY($1)
           OR con.conrelid IN (SELECT oid FROM view_deps) OR con.confrelid IN (SELECT oid FROM view_deps))), '[]'),
  'views', coalesce((
    SELECT json_agg(json_build_object(
      'schema', vn.nspname, 'name', v.relname, 'action', vd.action,
      'deps', (SELECT json_agg(json_build_object(
                 'oid', b.oid::int8, 'schema', bn.nspname, 'table', b.relname,
                 'cols', (SELECT json_agg(json_build_array(a.attnum, a.attname))
                          FROM pg_attribute a
                          WHERE a.attrelid = b.oid AND a.attnum IN (SELECT num FROM view_deps x WHERE x.view = v.oid AND x.oid = b.oid))))
               FROM pg_class b JOIN pg_namespace bn ON bn.oid = b.relnamespace
               WHERE b.oid IN (SELECT oid FROM view_deps x WHERE x.view = v.oid))))
    FROM (SELECT DISTINCT view, action FROM view_deps) vd
    JOIN pg_class v ON v.oid = vd.view JOIN pg_namespace vn ON vn.oid = v.relnamespace), '[]'),
  'timezones', (SELECT coalesce(json_agg(name), '[]') FROM pg_timezone_names),
  'functions', coalesce((
    SELECT json_agg(json_build_object(
      'schema', n.nspname,
      'name', p.proname,
      'volatility', p.provolatile::text,
      'retset', p.proretset,
      'rettype', format_type(p.prorettype, NULL),
      'nargs', p.pronargs,
      'ndefaults', p.pronargdefaults,
      'names', coalesce(p.proargnames, '{}'),
      'modes', coalesce(p.proargmodes::text[], '{}'),
      'types', coalesce((SELECT json_agg(format_type(x, NULL) ORDER BY i)
                FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) WITH ORDINALITY u(x, i)), '[]'),
      'ret_schema', CASE WHEN rc.relkind IN ('r', 'v', 'm', 'f', 'p') THEN rn.nspname END,
      'ret_table', CASE WHEN rc.relkind IN ('r', 'v', 'm', 'f', 'p') THEN rc.relname END,
      'rows', p.prorows,
      'arg_schema', (SELECT an.nspname FROM pg_type at JOIN pg_class ac ON ac.oid = at.typrelid JOIN pg_namespace an ON an.oid = ac.relnamespace
                     WHERE p.pronargs = 1 AND at.oid = p.proargtypes[0] AND ac.relkind IN ('r', 'v', 'm', 'f', 'p')),
      'arg_table', (SELECT ac.relname FROM pg_type at JOIN pg_class ac ON ac.oid = at.typrelid
                    WHERE p.pronargs = 1 AND at.oid = p.proargtypes[0] AND ac.relkind IN ('r', 'v', 'm', 'f', 'p')),
      'composite', CASE WHEN t.typrelid <> 0 THEN (
        SELECT json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) END))
    FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_type t ON t.oid = p.prorettype
    LEFT JOIN pg_class rc ON rc.oid = t.typrelid
    LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
    WHERE n.nspname = ANY($1) AND p.prokind = 'f'), '[]')
)::text
"#;
