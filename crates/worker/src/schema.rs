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
    /// A view or materialized view.
    #[serde(default)]
    pub view: bool,
    /// Rows can be inserted, updated, deleted: a table, or a view or
    /// foreign table `pg_relation_is_updatable` (triggers included) says
    /// takes them, as PostgREST's schema cache (OPTIONS' `Allow`).
    #[serde(default)]
    pub insertable: bool,
    #[serde(default)]
    pub updatable: bool,
    #[serde(default)]
    pub deletable: bool,
    /// Computed fields: functions of one parameter of this table's row
    /// type returning one value, as `(function schema, name and type)`.
    #[serde(skip)]
    pub computed: Vec<(String, Column)>,
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
    /// The key's columns are a primary key or unique constraint of `table`.
    #[serde(default)]
    pub one_to_one: bool,
}

/// A schema-qualified name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QName {
    pub schema: String,
    pub name: String,
}

impl QName {
    fn new(schema: &str, name: &str) -> Self {
        QName {
            schema: schema.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// How the rows of a relationship's two ends correspond. Column pairs are
/// `(origin column, foreign column)`. The variants' order and fields are
/// PostgREST's, so sorting relationships orders them as PostgREST lists
/// them (in PGRST201).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Card {
    /// One-to-many: the foreign table holds the key.
    O2M {
        cons: String,
        cols: Vec<(String, String)>,
    },
    /// Many-to-one: the origin holds the key.
    M2O {
        cons: String,
        cols: Vec<(String, String)>,
    },
    /// One-to-one: a key that is also unique; `parent` when the foreign
    /// table holds it.
    O2O {
        cons: String,
        cols: Vec<(String, String)>,
        parent: bool,
    },
    /// Many-to-many through a junction table.
    M2M(Junction),
    /// A computed relationship: `function(origin row) RETURNS [SETOF] foreign`.
    Computed { function: QName, to_one: bool },
}

/// The junction of a many-to-many relationship: `source` pairs are
/// `(origin column, junction column)`, `target` pairs `(foreign column,
/// junction column)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Junction {
    pub table: QName,
    pub cons1: String,
    pub cons2: String,
    pub source: Vec<(String, String)>,
    pub target: Vec<(String, String)>,
}

/// A relationship from `table` (the origin of an embedding) to `foreign`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Relationship {
    pub table: QName,
    pub foreign: QName,
    pub is_self: bool,
    pub card: Card,
    pub table_is_view: bool,
    pub foreign_is_view: bool,
}

impl Relationship {
    /// Many-to-one and one-to-one embed as an object, the others as an array.
    pub fn to_one(&self) -> bool {
        match self.card {
            Card::M2O { .. } | Card::O2O { .. } => true,
            Card::Computed { to_one, .. } => to_one,
            _ => false,
        }
    }

    /// The schema the relationship is looked up in: the foreign table's,
    /// or a computed relationship's function's.
    pub fn schema(&self) -> &str {
        match &self.card {
            Card::Computed { function, .. } => &function.schema,
            _ => &self.foreign.schema,
        }
    }

    /// The constraint name and column pairs of a direct (not many-to-many) relationship.
    pub fn direct(&self) -> Option<(&str, &[(String, String)])> {
        match &self.card {
            Card::O2M { cons, cols } | Card::M2O { cons, cols } | Card::O2O { cons, cols, .. } => {
                Some((cons, cols))
            }
            Card::M2M(_) | Card::Computed { .. } => None,
        }
    }
}

/// A view column's origin in a base table (from the view's rewrite rule).
#[derive(Debug, Clone, Deserialize)]
struct RawDep {
    oid: u32,
    schema: String,
    table: String,
    /// `(attnum, name)` of the columns the view uses.
    cols: Vec<(i32, String)>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawView {
    schema: String,
    name: String,
    /// `pg_rewrite.ev_action` of the view's `_RETURN` rule, as text.
    action: String,
    deps: Vec<RawDep>,
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
    /// The table or view whose rows it returns (embeddings start there).
    pub ret_table: Option<QName>,
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
    #[serde(default)]
    ret_schema: Option<String>,
    #[serde(default)]
    ret_table: Option<String>,
    /// The relation whose row type is the only parameter (computed fields
    /// and relationships).
    #[serde(default)]
    arg_schema: Option<String>,
    #[serde(default)]
    arg_table: Option<String>,
    #[serde(default)]
    rows: f64,
}

#[derive(Deserialize)]
struct Raw {
    tables: Vec<Table>,
    fks: Vec<ForeignKey>,
    #[serde(default)]
    views: Vec<RawView>,
    functions: Vec<RawFunction>,
    #[serde(default)]
    timezones: std::collections::HashSet<String>,
}

/// Everything the worker knows about a tenant database.
#[derive(Debug, Default)]
pub struct Schema {
    tables: BySchema<Arc<Table>>,
    /// Relationships by origin, sorted as PostgREST sorts them.
    rels: BySchema<Vec<Relationship>>,
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

    /// The relationships starting at `schema.name`.
    pub fn relationships(&self, schema: &str, name: &str) -> &[Relationship] {
        self.rels
            .get(schema)
            .and_then(|by_name| by_name.get(name))
            .map_or(&[], Vec::as_slice)
    }

    /// Every relationship of the exposed schemas.
    pub fn all_relationships(&self) -> impl Iterator<Item = &Relationship> {
        self.rels.values().flat_map(HashMap::values).flatten()
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
            .query_typed(crate::sql::catalog::LOAD, &[(&schemas, Type::TEXT_ARRAY)])
            .await?
            .pop()
            .ok_or_else(|| DbError::Decode("schema cache: no row".into()))?;
        let json: String = row.try_get(0)?;
        let raw: Raw = serde_json::from_str(&json)
            .map_err(|e| DbError::Decode(format!("schema cache: {e}")))?;
        Ok(Self::from_raw(raw))
    }

    fn from_raw(raw: Raw) -> Schema {
        let mut functions: BySchema<Vec<Arc<Function>>> = HashMap::new();
        let mut computed_fields: HashMap<QName, Vec<(String, Column)>> = HashMap::new();
        let mut computed_rels: Vec<Relationship> = Vec::new();
        for f in raw.functions {
            if let (Some(s), Some(t)) = (&f.arg_schema, &f.arg_table) {
                let origin = QName::new(s, t);
                match (&f.ret_schema, &f.ret_table) {
                    (Some(rs), Some(rt)) => computed_rels.push(Relationship {
                        is_self: origin.schema == *rs && origin.name == *rt,
                        table: origin,
                        foreign: QName::new(rs, rt),
                        card: Card::Computed {
                            function: QName::new(&f.schema, &f.name),
                            to_one: !f.retset || (f.rows - 1.0).abs() < f64::EPSILON,
                        },
                        table_is_view: false,
                        foreign_is_view: false,
                    }),
                    _ if !f.retset && f.rettype != "void" => {
                        computed_fields.entry(origin).or_default().push((
                            f.schema.clone(),
                            Column {
                                name: f.name.clone(),
                                ty: f.rettype.clone(),
                                default: None,
                            },
                        ));
                    }
                    _ => {}
                }
            }
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
                    ret_table: f
                        .ret_schema
                        .zip(f.ret_table)
                        .map(|(s, n)| QName { schema: s, name: n }),
                }));
        }
        let mut tables: BySchema<Arc<Table>> = HashMap::new();
        for mut t in raw.tables {
            if let Some(c) = computed_fields.remove(&QName::new(&t.schema, &t.name)) {
                t.computed = c;
            }
            tables
                .entry(t.schema.clone())
                .or_default()
                .insert(t.name.clone(), Arc::new(t));
        }
        let rels = relationships(&tables, &raw.fks, &raw.views, computed_rels);
        // Overloads in PostgREST's order (by their parameters' names and types).
        for by_name in functions.values_mut() {
            for v in by_name.values_mut() {
                v.sort_by(|a, b| {
                    let key = |f: &Function| -> Vec<(String, String)> {
                        f.args
                            .iter()
                            .map(|x| (x.name.clone(), x.ty.clone()))
                            .collect()
                    };
                    key(a).cmp(&key(b))
                });
            }
        }
        Schema {
            tables,
            rels,
            timezones: raw.timezones,
            functions,
        }
    }
}

/// The base-table origin of a view's output columns: `(resno, table oid,
/// attnum)` of each entry of the top-level target list of the view's
/// `_RETURN` rule (`pg_rewrite.ev_action` in Postgres' node text format;
/// the `resorigtbl`/`resorigcol` the parser records for plain column
/// references). Entries computed from expressions have no origin.
fn view_origins(action: &str) -> Vec<(i32, u32, i32)> {
    // Tokens with the `{}` nesting depth they sit at (`\` escapes a char).
    let mut tokens: Vec<(i32, String)> = Vec::new();
    let mut depth = 0i32;
    let mut tok = String::new();
    let mut chars = action.chars();
    let flush = |tok: &mut String, tokens: &mut Vec<(i32, String)>, depth: i32| {
        if !tok.is_empty() {
            tokens.push((depth, std::mem::take(tok)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    tok.push(n);
                }
            }
            '{' => {
                flush(&mut tok, &mut tokens, depth);
                depth += 1;
            }
            '}' => {
                flush(&mut tok, &mut tokens, depth);
                depth -= 1;
            }
            '(' | ')' => flush(&mut tok, &mut tokens, depth),
            c if c.is_whitespace() => flush(&mut tok, &mut tokens, depth),
            c => tok.push(c),
        }
    }
    flush(&mut tok, &mut tokens, depth);
    let mut out = Vec::new();
    let mut in_list = false;
    let (mut resno, mut tbl) = (0i32, 0u32);
    let mut iter = tokens.iter().peekable();
    while let Some((d, t)) = iter.next() {
        if *d == 1 && t.starts_with(':') {
            in_list = t == ":targetList";
            continue;
        }
        if !in_list || *d != 2 {
            continue;
        }
        let value = |iter: &mut std::iter::Peekable<std::slice::Iter<'_, (i32, String)>>| {
            iter.next_if(|(d2, _)| *d2 == 2).map(|(_, v)| v.clone())
        };
        match t.as_str() {
            ":resno" => resno = value(&mut iter).and_then(|v| v.parse().ok()).unwrap_or(0),
            ":resorigtbl" => tbl = value(&mut iter).and_then(|v| v.parse().ok()).unwrap_or(0),
            ":resorigcol" => {
                let col: i32 = value(&mut iter).and_then(|v| v.parse().ok()).unwrap_or(0);
                if tbl != 0 && col > 0 && resno > 0 {
                    out.push((resno, tbl, col));
                }
                (resno, tbl) = (0, 0);
            }
            _ => {}
        }
    }
    out
}

/// Every view's columns that come straight from a base table column:
/// `view → [(view column, base table, base column)]`, followed through
/// views of views.
fn view_columns(
    tables: &BySchema<Arc<Table>>,
    views: &[RawView],
) -> HashMap<QName, Vec<(String, QName, String)>> {
    let mut map: HashMap<QName, Vec<(String, QName, String)>> = HashMap::new();
    for v in views {
        let Some(t) = tables.get(&v.schema).and_then(|m| m.get(&v.name)) else {
            continue;
        };
        let mut cols = Vec::new();
        for (resno, oid, attnum) in view_origins(&v.action) {
            let Some(vcol) = usize::try_from(resno - 1)
                .ok()
                .and_then(|i| t.columns.get(i))
            else {
                continue;
            };
            let Some(dep) = v.deps.iter().find(|d| d.oid == oid) else {
                continue;
            };
            let Some((_, bcol)) = dep.cols.iter().find(|(n, _)| *n == attnum) else {
                continue;
            };
            cols.push((
                vcol.name.clone(),
                QName::new(&dep.schema, &dep.table),
                bcol.clone(),
            ));
        }
        map.insert(QName::new(&v.schema, &v.name), cols);
    }
    // Views of views: follow the inner view's columns to its base tables.
    for _ in 0..8 {
        let snapshot = map.clone();
        let mut changed = false;
        for cols in map.values_mut() {
            for (_, base, bcol) in cols.iter_mut() {
                if let Some(inner) = snapshot.get(base)
                    && let Some((_, b2, c2)) = inner.iter().find(|(vc, ..)| vc == bcol)
                {
                    *base = b2.clone();
                    *bcol = c2.clone();
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    map
}

/// Every way of naming `base_cols` through a view's columns (a base column
/// may appear under several names), as PostgREST expands them.
fn view_col_combos(
    mapping: &[(String, QName, String)],
    base: &QName,
    base_cols: &[&str],
) -> Vec<Vec<String>> {
    let mut combos: Vec<Vec<String>> = vec![Vec::new()];
    for bc in base_cols {
        let names: Vec<&String> = mapping
            .iter()
            .filter(|(_, b, c)| b == base && c == bc)
            .map(|(v, ..)| v)
            .collect();
        combos = combos
            .into_iter()
            .flat_map(|prefix| {
                names.iter().map(move |n| {
                    let mut p = prefix.clone();
                    p.push((*n).clone());
                    p
                })
            })
            .collect();
    }
    combos
}

/// PostgREST's relationships: each foreign key as many-to-one (one-to-one
/// when its columns are unique), the same through views that expose the
/// key's columns, many-to-many through junction tables whose primary key
/// holds the columns of two foreign keys, then the inverse of each
/// (one-to-many, one-to-one parent). Indexed by origin, only between the
/// exposed tables and views, sorted.
fn relationships(
    tables: &BySchema<Arc<Table>>,
    fks: &[ForeignKey],
    views: &[RawView],
    computed: Vec<Relationship>,
) -> BySchema<Vec<Relationship>> {
    let mut rels: Vec<Relationship> = fks
        .iter()
        .map(|fk| {
            let table = QName::new(&fk.schema, &fk.table);
            let foreign = QName::new(&fk.ref_schema, &fk.ref_table);
            let cols: Vec<(String, String)> = fk
                .columns
                .iter()
                .cloned()
                .zip(fk.ref_columns.iter().cloned())
                .collect();
            let cons = fk.name.clone();
            Relationship {
                is_self: table == foreign,
                table,
                foreign,
                card: if fk.one_to_one {
                    Card::O2O {
                        cons,
                        cols,
                        parent: false,
                    }
                } else {
                    Card::M2O { cons, cols }
                },
                table_is_view: false,
                foreign_is_view: false,
            }
        })
        .collect();

    // Through views.
    let vcols = view_columns(tables, views);
    let mut via_views = Vec::new();
    for r in &rels {
        let Some((cons, cols)) = r.direct() else {
            continue;
        };
        let card = |cols: Vec<(String, String)>| match &r.card {
            Card::O2O { .. } => Card::O2O {
                cons: cons.to_owned(),
                cols,
                parent: false,
            },
            _ => Card::M2O {
                cons: cons.to_owned(),
                cols,
            },
        };
        let own: Vec<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
        let refd: Vec<&str> = cols.iter().map(|(_, f)| f.as_str()).collect();
        let mut origins: Vec<(QName, Vec<String>, bool)> = vec![(
            r.table.clone(),
            own.iter().map(|s| (*s).to_owned()).collect(),
            false,
        )];
        let mut targets: Vec<(QName, Vec<String>, bool)> = vec![(
            r.foreign.clone(),
            refd.iter().map(|s| (*s).to_owned()).collect(),
            false,
        )];
        for (view, mapping) in &vcols {
            for combo in view_col_combos(mapping, &r.table, &own) {
                origins.push((view.clone(), combo, true));
            }
            for combo in view_col_combos(mapping, &r.foreign, &refd) {
                targets.push((view.clone(), combo, true));
            }
        }
        for (o, ocols, oview) in &origins {
            for (t, tcols, tview) in &targets {
                if !oview && !tview {
                    continue;
                }
                via_views.push(Relationship {
                    table: o.clone(),
                    foreign: t.clone(),
                    is_self: o == t,
                    card: card(ocols.iter().cloned().zip(tcols.iter().cloned()).collect()),
                    table_is_view: *oview,
                    foreign_is_view: *tview,
                });
            }
        }
    }
    rels.extend(via_views);

    // Many-to-many through junctions (tables, or views with a key).
    let pk_of = |q: &QName| -> Vec<String> {
        let Some(t) = tables.get(&q.schema).and_then(|m| m.get(&q.name)) else {
            return Vec::new();
        };
        if !t.view {
            return t.pk.clone();
        }
        // A view's key: the columns of its base table's primary key.
        let Some(mapping) = vcols.get(q) else {
            return Vec::new();
        };
        let Some((_, base, _)) = mapping.first() else {
            return Vec::new();
        };
        let Some(bt) = tables.get(&base.schema).and_then(|m| m.get(&base.name)) else {
            return Vec::new();
        };
        let mut pk = Vec::new();
        for c in &bt.pk {
            match mapping.iter().find(|(_, b, bc)| b == base && bc == c) {
                Some((v, ..)) => pk.push(v.clone()),
                None => return Vec::new(),
            }
        }
        pk
    };
    let mut m2m = Vec::new();
    let m2o: Vec<&Relationship> = rels
        .iter()
        .filter(|r| matches!(r.card, Card::M2O { .. }))
        .collect();
    for r1 in &m2o {
        let Card::M2O {
            cons: cons1,
            cols: cols1,
        } = &r1.card
        else {
            continue;
        };
        let pk = pk_of(&r1.table);
        if pk.is_empty() || !cols1.iter().all(|(c, _)| pk.contains(c)) {
            continue;
        }
        for r2 in &m2o {
            let Card::M2O {
                cons: cons2,
                cols: cols2,
            } = &r2.card
            else {
                continue;
            };
            if r2.table != r1.table || cons1 == cons2 || !cols2.iter().all(|(c, _)| pk.contains(c))
            {
                continue;
            }
            let swap = |v: &[(String, String)]| -> Vec<(String, String)> {
                v.iter().map(|(a, b)| (b.clone(), a.clone())).collect()
            };
            m2m.push(Relationship {
                table: r1.foreign.clone(),
                foreign: r2.foreign.clone(),
                is_self: r1.foreign == r2.foreign,
                card: Card::M2M(Junction {
                    table: r1.table.clone(),
                    cons1: cons1.clone(),
                    cons2: cons2.clone(),
                    source: swap(cols1),
                    target: swap(cols2),
                }),
                table_is_view: r1.foreign_is_view,
                foreign_is_view: r2.foreign_is_view,
            });
        }
    }
    rels.extend(m2m);

    // Inverses.
    let mut inverse = Vec::new();
    for r in &rels {
        let swap = |v: &[(String, String)]| -> Vec<(String, String)> {
            v.iter().map(|(a, b)| (b.clone(), a.clone())).collect()
        };
        let card = match &r.card {
            Card::M2O { cons, cols } => Card::O2M {
                cons: cons.clone(),
                cols: swap(cols),
            },
            Card::O2O { cons, cols, parent } => Card::O2O {
                cons: cons.clone(),
                cols: swap(cols),
                parent: !parent,
            },
            _ => continue,
        };
        inverse.push(Relationship {
            table: r.foreign.clone(),
            foreign: r.table.clone(),
            is_self: r.is_self,
            card,
            table_is_view: r.foreign_is_view,
            foreign_is_view: r.table_is_view,
        });
    }
    rels.extend(inverse);
    // Computed relationships override detected ones of the same name.
    rels.retain(|r| {
        !computed.iter().any(|c| {
            c.table == r.table
                && matches!(&c.card, Card::Computed { function, .. } if function.name == r.foreign.name)
        })
    });
    rels.extend(computed);

    let exposed = |q: &QName| {
        tables
            .get(&q.schema)
            .is_some_and(|m| m.contains_key(&q.name))
    };
    let mut out: BySchema<Vec<Relationship>> = HashMap::new();
    for r in rels {
        if exposed(&r.table) && exposed(&r.foreign) {
            out.entry(r.table.schema.clone())
                .or_default()
                .entry(r.table.name.clone())
                .or_default()
                .push(r);
        }
    }
    for by_name in out.values_mut() {
        for v in by_name.values_mut() {
            v.sort();
            v.dedup();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_origins_reads_the_top_level_target_list() {
        // Abridged `pg_rewrite.ev_action` of
        // `SELECT id AS ident, "we}ird" AS w, (SELECT 1) AS one, x FROM t WHERE id IN (SELECT id FROM t)`.
        let action = r#"({QUERY :commandType 1 :rtable ({RANGETBLENTRY :eref {ALIAS :aliasname t :colnames ("id" "we\}ird" "x")} :relid 16385}) :jointree {FROMEXPR :fromlist ({RANGETBLREF :rtindex 1}) :quals {SUBLINK :subselect {QUERY :targetList ({TARGETENTRY :expr {VAR :varno 1} :resno 1 :resname id :resorigtbl 16385 :resorigcol 1 :resjunk false}) :override 0}}} :targetList ({TARGETENTRY :expr {VAR :varno 3 :varattno 1} :resno 1 :resname ident :ressortgroupref 0 :resorigtbl 16385 :resorigcol 1 :resjunk false} {TARGETENTRY :expr {VAR :varno 3 :varattno 2} :resno 2 :resname w :resorigtbl 16385 :resorigcol 2 :resjunk false} {TARGETENTRY :expr {SUBLINK :subselect {QUERY :targetList ({TARGETENTRY :expr {CONST :constvalue 4 [ 1 0 0 0 ]} :resno 1 :resname ?column? :resorigtbl 0 :resorigcol 0 :resjunk false})}} :resno 3 :resname one :resorigtbl 0 :resorigcol 0 :resjunk false} {TARGETENTRY :expr {VAR :varno 3 :varattno 3} :resno 4 :resname x :resorigtbl 16385 :resorigcol 3 :resjunk false}) :override 0})"#;
        assert_eq!(
            view_origins(action),
            [(1, 16385, 1), (2, 16385, 2), (4, 16385, 3)]
        );
        assert!(view_origins("").is_empty());
        assert!(view_origins("({QUERY :targetList <>})").is_empty());
    }
}
