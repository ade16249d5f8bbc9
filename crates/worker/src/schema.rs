//! The schema cache of one tenant: tables, views, columns, primary keys,
//! foreign keys and functions of the exposed schemas, read from the catalogs
//! in one query (the catalogs build the JSON, serde reads it).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use tokio_postgres::types::Type;

use crate::conns::{Conn, DbError};

/// A column of a table, view or function result.
#[derive(Debug, Clone, Deserialize)]
pub struct Column {
    pub name: String,
    /// `format_type` of the column: a valid, quoted type name.
    #[serde(rename = "type")]
    pub ty: String,
    /// The column's DEFAULT expression (`pg_get_expr`), for `missing=default`.
    #[serde(default)]
    pub default: Option<String>,
}

impl Column {
    /// Text-like columns compare with LIKE directly; others are cast to text.
    pub fn is_text(&self) -> bool {
        matches!(self.ty.as_str(), "text" | "name" | "citext") || self.ty.starts_with("character")
    }
}

/// A table or view.
#[derive(Debug, Clone, Deserialize)]
pub struct Table {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    pub pk: Vec<String>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A foreign key `table(columns) → ref_table(ref_columns)`.
#[derive(Debug, Clone, Deserialize)]
pub struct ForeignKey {
    pub name: String,
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    pub ref_schema: String,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
}

/// An input argument of a function.
#[derive(Debug, Clone)]
pub struct Arg {
    pub name: String,
    pub ty: String,
    pub has_default: bool,
}

/// A function callable through `/rpc`.
#[derive(Debug, Clone)]
pub struct Function {
    pub schema: String,
    pub name: String,
    pub args: Vec<Arg>,
    /// `i`mmutable, `s`table or `v`olatile.
    pub volatility: String,
    pub returns_set: bool,
    /// Columns of a composite (table-like) result; `None` for scalars.
    pub columns: Option<Vec<Column>>,
    pub returns_void: bool,
}

#[derive(Deserialize)]
struct RawFunction {
    schema: String,
    name: String,
    volatility: String,
    retset: bool,
    rettype: String,
    nargs: usize,
    ndefaults: usize,
    names: Vec<String>,
    modes: Vec<String>,
    types: Vec<String>,
    composite: Option<Vec<Column>>,
}

#[derive(Deserialize)]
struct Raw {
    tables: Vec<Table>,
    fks: Vec<ForeignKey>,
    functions: Vec<RawFunction>,
    #[serde(default)]
    timezones: std::collections::HashSet<String>,
}

/// Everything the worker knows about a tenant database.
#[derive(Debug, Default)]
pub struct Schema {
    tables: BySchema<Arc<Table>>,
    pub fks: Vec<ForeignKey>,
    functions: BySchema<Vec<Arc<Function>>>,
    /// `pg_timezone_names`: the values `Prefer: timezone=` accepts.
    pub timezones: std::collections::HashSet<String>,
}

/// By schema, then by name: a lookup borrows the names, no allocation.
type BySchema<V> = HashMap<String, HashMap<String, V>>;

impl Schema {
    pub fn table(&self, schema: &str, name: &str) -> Option<&Arc<Table>> {
        self.tables.get(schema)?.get(name)
    }

    /// The names of the functions of `schema`.
    pub fn function_names(&self, schema: &str) -> Vec<&str> {
        self.functions
            .get(schema)
            .map(|by_name| by_name.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    pub fn functions(&self, schema: &str, name: &str) -> &[Arc<Function>] {
        self.functions
            .get(schema)
            .and_then(|by_name| by_name.get(name))
            .map_or(&[], Vec::as_slice)
    }

    /// Loads the cache for `schemas` from the catalogs.
    pub async fn load(conn: &Conn, schemas: &[String]) -> Result<Schema, DbError> {
        let row = conn
            .client
            .query_typed(LOAD, &[(&schemas, Type::TEXT_ARRAY)])
            .await?
            .pop()
            .ok_or_else(|| DbError::Decode("schema cache: no row".into()))?;
        let json: String = row.try_get(0)?;
        let raw: Raw = serde_json::from_str(&json)
            .map_err(|e| DbError::Decode(format!("schema cache: {e}")))?;
        Ok(Self::from_raw(raw))
    }

    fn from_raw(raw: Raw) -> Schema {
        let mut tables: BySchema<Arc<Table>> = HashMap::new();
        for t in raw.tables {
            tables
                .entry(t.schema.clone())
                .or_default()
                .insert(t.name.clone(), Arc::new(t));
        }
        let mut functions: BySchema<Vec<Arc<Function>>> = HashMap::new();
        for f in raw.functions {
            let mut args = Vec::new();
            let mut outs = Vec::new();
            for (i, ty) in f.types.iter().enumerate() {
                let mode = f.modes.get(i).map_or("i", String::as_str);
                let name = f.names.get(i).cloned().unwrap_or_default();
                match mode {
                    "i" | "b" | "v" => args.push(Arg {
                        name: name.clone(),
                        ty: ty.clone(),
                        has_default: false,
                    }),
                    _ => {}
                }
                if matches!(mode, "o" | "b" | "t") {
                    outs.push(Column {
                        name,
                        ty: ty.clone(),
                        default: None,
                    });
                }
            }
            let n = args.len().min(f.nargs);
            for a in args.iter_mut().skip(n.saturating_sub(f.ndefaults)) {
                a.has_default = true;
            }
            let columns = if outs.len() > 1 || f.modes.iter().any(|m| m == "t") {
                Some(outs)
            } else {
                f.composite
            };
            functions
                .entry(f.schema.clone())
                .or_default()
                .entry(f.name.clone())
                .or_default()
                .push(Arc::new(Function {
                    schema: f.schema,
                    name: f.name,
                    args,
                    volatility: f.volatility,
                    returns_set: f.retset,
                    columns,
                    returns_void: f.rettype == "void",
                }));
        }
        Schema {
            tables,
            fks: raw.fks,
            timezones: raw.timezones,
            functions,
        }
    }
}

const LOAD: &str = r#"
SELECT json_build_object(
  'tables', coalesce((
    SELECT json_agg(json_build_object(
      'schema', n.nspname,
      'name', c.relname,
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
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n)) ORDER BY con.oid)
    FROM pg_constraint con
    JOIN pg_class cl ON cl.oid = con.conrelid JOIN pg_namespace ns ON ns.oid = cl.relnamespace
    JOIN pg_class cf ON cf.oid = con.confrelid JOIN pg_namespace nf ON nf.oid = cf.relnamespace
    WHERE con.contype = 'f' AND ns.nspname = ANY($1) AND nf.nspname = ANY($1)), '[]'),
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
      'composite', CASE WHEN t.typrelid <> 0 THEN (
        SELECT json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) END))
    FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_type t ON t.oid = p.prorettype
    WHERE n.nspname = ANY($1) AND p.prokind = 'f'), '[]')
)::text
"#;
