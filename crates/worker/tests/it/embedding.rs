//! PostgREST 12 conformance: API → Resource Embedding, section by section
//! (many-to-one, one-to-many, many-to-many, one-to-one, self-referencing,
//! views, hints and disambiguation, embedded filters/order/pages, top-level
//! filtering (`!inner`, null filtering), empty embeds, related orders,
//! spread). Relationship detection and error wording are PostgREST's
//! (`SchemaCache.hs`, `Plan.hs` `findRel`, `Error.hs`).

use serde_json::{Value, json};

use crate::helpers::*;

/// PostgREST's documentation schema (films, directors, actors, roles,
/// technical specs, nominations), a self-referencing table, views over
/// public and private tables.
const FILMS: &str = r#"
CREATE TABLE directors (id int PRIMARY KEY, first_name text, last_name text, meta jsonb);
CREATE TABLE films (id int PRIMARY KEY, director_id int REFERENCES directors(id), title text, year int, rating numeric, language text);
CREATE TABLE actors (id int PRIMARY KEY, first_name text, last_name text);
CREATE TABLE roles (film_id int REFERENCES films(id), actor_id int REFERENCES actors(id), character text, PRIMARY KEY (film_id, actor_id));
CREATE TABLE awards (film_id int REFERENCES films(id), actor_id int REFERENCES actors(id), name text, PRIMARY KEY (film_id, actor_id));
CREATE TABLE technical_specs (film_id int PRIMARY KEY REFERENCES films(id), camera text);
CREATE TABLE nominations (id int PRIMARY KEY, competition text, film_id int REFERENCES films(id), rank int);
CREATE TABLE employees (id int PRIMARY KEY, name text, supervisor_id int REFERENCES employees(id));
CREATE VIEW nominated_films AS
  SELECT f.id AS film_id, f.title, f.director_id AS made_by FROM films f WHERE f.id IN (SELECT film_id FROM nominations);
CREATE SCHEMA private;
CREATE TABLE private.customers (id int PRIMARY KEY, name text);
CREATE TABLE private.orders (id int PRIMARY KEY, customer_id int REFERENCES private.customers(id), amount numeric);
CREATE VIEW customers AS SELECT id, name FROM private.customers;
CREATE VIEW purchases AS SELECT id, customer_id AS buyer, amount FROM private.orders;
CREATE VIEW big_purchases AS SELECT id AS purchase, buyer FROM purchases WHERE amount > 10;
CREATE FUNCTION full_name(directors) RETURNS text LANGUAGE sql STABLE AS $$ SELECT $1.first_name || ' ' || $1.last_name $$;
CREATE FUNCTION directed(directors) RETURNS SETOF films LANGUAGE sql STABLE AS $$ SELECT * FROM films WHERE director_id = $1.id $$;
CREATE FUNCTION maker(films) RETURNS SETOF directors ROWS 1 LANGUAGE sql STABLE AS $$ SELECT * FROM directors WHERE id = $1.director_id $$;

INSERT INTO directors VALUES
  (1, 'Christopher', 'Nolan', '{"born": 1970, "awards": ["oscar", "bafta"]}'),
  (2, 'Denis', 'Villeneuve', '{"born": 1967}');
INSERT INTO films VALUES
  (1, 1, 'Inception', 2010, 8.8, 'en'),
  (2, 1, 'Interstellar', 2014, 8.7, 'en'),
  (3, 2, 'Dune', 2021, 8.0, 'en'),
  (4, 2, 'Arrival', 2016, 7.9, 'en'),
  (5, 1, 'Memento', 2000, 8.4, 'en');
INSERT INTO actors VALUES (1, 'Leonardo', 'DiCaprio'), (2, 'Matthew', 'McConaughey'), (3, 'Timothée', 'Chalamet'), (4, 'Amy', 'Adams');
INSERT INTO roles VALUES (1, 1, 'Cobb'), (2, 2, 'Cooper'), (2, 3, 'Tom'), (3, 3, 'Paul'), (4, 4, 'Louise');
INSERT INTO awards VALUES (1, 1, 'best');
INSERT INTO technical_specs VALUES (1, 'IMAX'), (3, 'Alexa');
INSERT INTO nominations VALUES (1, 'oscars', 1, 1), (2, 'oscars', 3, 2), (3, 'baftas', 3, 1);
INSERT INTO employees VALUES (1, 'Ann', NULL), (2, 'Bob', 1), (3, 'Cid', 1), (4, 'Dan', 2);
INSERT INTO private.customers VALUES (1, 'acme'), (2, 'globex');
INSERT INTO private.orders VALUES (1, 1, 5), (2, 1, 50), (3, 2, 20);
"#;

pub async fn films_stack(worker_env: &[(&str, &str)]) -> Stack {
    let s = Stack::start_with(worker_env).await;
    s.sql(FILMS).await;
    s
}

async fn ok(s: &Stack, path: &str) -> Value {
    let (st, v) = call(s.get(path)).await;
    assert_eq!(st, 200, "{path}: {v}");
    v
}

/// An error body with exactly PostgREST's keys and these values.
#[track_caller]
fn assert_body(got: &(http::StatusCode, Value), status: u16, body: Value) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1, body);
}

/// Resource Embedding → many-to-one, one-to-many, many-to-many, one-to-one,
/// self-referencing, nested.
#[tokio::test]
async fn relationships() {
    let s = films_stack(&[]).await;
    // Many-to-one: an object.
    assert_eq!(
        ok(&s, "/films?select=title,directors(last_name)&id=eq.1").await,
        json!([{"title": "Inception", "directors": {"last_name": "Nolan"}}])
    );
    // One-to-many: an array.
    assert_eq!(
        ok(
            &s,
            "/directors?select=last_name,films(title)&id=eq.2&films.order=id"
        )
        .await,
        json!([{"last_name": "Villeneuve", "films": [{"title": "Dune"}, {"title": "Arrival"}]}])
    );
    // Many-to-many through a junction table (named by a hint when two fit).
    assert_eq!(
        ok(
            &s,
            "/actors?select=first_name,films!roles(title)&id=eq.3&films.order=id"
        )
        .await,
        json!([{"first_name": "Timothée", "films": [{"title": "Interstellar"}, {"title": "Dune"}]}])
    );
    assert_eq!(
        ok(
            &s,
            "/films?select=title,actors!roles(last_name)&id=eq.2&actors.order=id"
        )
        .await,
        json!([{"title": "Interstellar", "actors": [{"last_name": "McConaughey"}, {"last_name": "Chalamet"}]}])
    );
    assert_eq!(
        ok(
            &s,
            "/films?select=title,actors!awards(last_name)&id=lte.2&order=id"
        )
        .await,
        json!([
            {"title": "Inception", "actors": [{"last_name": "DiCaprio"}]},
            {"title": "Interstellar", "actors": []},
        ])
    );
    // The junction table itself is one-to-many from both sides.
    assert_eq!(
        ok(
            &s,
            "/films?select=roles(character)&id=eq.2&roles.order=actor_id"
        )
        .await,
        json!([{"roles": [{"character": "Cooper"}, {"character": "Tom"}]}])
    );
    // One-to-one (the key is also the primary key): an object both ways.
    assert_eq!(
        ok(
            &s,
            "/films?select=title,technical_specs(camera)&id=lte.2&order=id"
        )
        .await,
        json!([
            {"title": "Inception", "technical_specs": {"camera": "IMAX"}},
            {"title": "Interstellar", "technical_specs": null},
        ])
    );
    assert_eq!(
        ok(
            &s,
            "/technical_specs?select=camera,films(title)&film_id=eq.3"
        )
        .await,
        json!([{"camera": "Alexa", "films": {"title": "Dune"}}])
    );
    // Self-referencing: many-to-one by the key's column, one-to-many by the
    // table's name or with the column as a hint.
    assert_eq!(
        ok(
            &s,
            "/employees?select=name,supervisor:supervisor_id(name)&id=eq.4"
        )
        .await,
        json!([{"name": "Dan", "supervisor": {"name": "Bob"}}])
    );
    assert_eq!(
        ok(
            &s,
            "/employees?select=name,subordinates:employees(name)&id=eq.1&subordinates.order=id"
        )
        .await,
        json!([{"name": "Ann", "subordinates": [{"name": "Bob"}, {"name": "Cid"}]}])
    );
    assert_eq!(
        ok(
            &s,
            "/employees?select=name,employees!supervisor_id(name)&id=eq.2"
        )
        .await,
        json!([{"name": "Bob", "employees": [{"name": "Dan"}]}])
    );
    // Nested, with renames and casts inside the embedding.
    assert_eq!(
        ok(
            &s,
            "/directors?select=last_name,films(title,y:year::text,actors!roles(name:first_name))&id=eq.2&films.order=id"
        )
        .await,
        json!([{"last_name": "Villeneuve", "films": [
            {"title": "Dune", "y": "2021", "actors": [{"name": "Timothée"}]},
            {"title": "Arrival", "y": "2016", "actors": [{"name": "Amy"}]},
        ]}])
    );
    // A foreign key's name as the target (deprecated in PostgREST, still accepted).
    assert_eq!(
        ok(
            &s,
            "/films?select=title,films_director_id_fkey(last_name)&id=eq.5"
        )
        .await,
        json!([{"title": "Memento", "films_director_id_fkey": {"last_name": "Nolan"}}])
    );
}

/// Resource Embedding → embedding views: relationships through the columns
/// a view takes from its base table (renamed, over a private schema, a view
/// of a view).
#[tokio::test]
async fn views() {
    let s = films_stack(&[]).await;
    assert_eq!(
        ok(
            &s,
            "/nominated_films?select=title,directors(last_name)&order=film_id"
        )
        .await,
        json!([
            {"title": "Inception", "directors": {"last_name": "Nolan"}},
            {"title": "Dune", "directors": {"last_name": "Villeneuve"}},
        ])
    );
    assert_eq!(
        ok(
            &s,
            "/directors?select=last_name,nominated_films(title)&id=eq.2"
        )
        .await,
        json!([{"last_name": "Villeneuve", "nominated_films": [{"title": "Dune"}]}])
    );
    // The view's key columns relate it to the base table's relationships.
    assert_eq!(
        ok(
            &s,
            "/nominated_films?select=title,nominations(competition)&film_id=eq.3&nominations.order=id"
        )
        .await,
        json!([{"title": "Dune", "nominations": [{"competition": "oscars"}, {"competition": "baftas"}]}])
    );
    // Views over tables of a schema that is not exposed.
    assert_eq!(
        ok(
            &s,
            "/customers?select=name,purchases(amount)&order=id&purchases.order=id"
        )
        .await,
        json!([
            {"name": "acme", "purchases": [{"amount": 5}, {"amount": 50}]},
            {"name": "globex", "purchases": [{"amount": 20}]},
        ])
    );
    assert_eq!(
        ok(&s, "/purchases?select=id,customers(name)&id=eq.3").await,
        json!([{"id": 3, "customers": {"name": "globex"}}])
    );
    // A view of a view.
    assert_eq!(
        ok(
            &s,
            "/big_purchases?select=purchase,customers(name)&order=purchase"
        )
        .await,
        json!([
            {"purchase": 2, "customers": {"name": "acme"}},
            {"purchase": 3, "customers": {"name": "globex"}},
        ])
    );
}

/// Resource Embedding → embedded filters, order, limit and offset; top-level
/// filtering with `!inner` and `rel=is.null`; empty embeds; related orders.
#[tokio::test]
async fn filters_orders_and_empty_embeds() {
    let s = films_stack(&[]).await;
    // Filters, order, limit and offset inside an embedding.
    assert_eq!(
        ok(
            &s,
            "/directors?select=last_name,films(title)&id=eq.1&films.order=year.desc&films.limit=1&films.offset=1"
        )
        .await,
        json!([{"last_name": "Nolan", "films": [{"title": "Inception"}]}])
    );
    assert_eq!(
        ok(
            &s,
            "/directors?select=last_name,films(title)&films.year=gt.2012&films.or=(title.like.I*,title.like.D*)&order=id&films.order=id"
        )
        .await,
        json!([
            {"last_name": "Nolan", "films": [{"title": "Interstellar"}]},
            {"last_name": "Villeneuve", "films": [{"title": "Dune"}]},
        ])
    );
    // `!inner` keeps only parents with a matching child; `!left` is the default.
    assert_eq!(
        ok(
            &s,
            "/films?select=title,nominations!inner(rank)&nominations.rank=eq.2"
        )
        .await,
        json!([{"title": "Dune", "nominations": [{"rank": 2}]}])
    );
    assert_eq!(
        ok(
            &s,
            "/films?select=id,technical_specs!left(camera)&order=id&limit=2"
        )
        .await,
        json!([{"id": 1, "technical_specs": {"camera": "IMAX"}}, {"id": 2, "technical_specs": null}])
    );
    // Empty embeds filter without adding the key.
    assert_eq!(
        ok(
            &s,
            "/films?select=title,directors!inner()&directors.last_name=eq.Villeneuve&order=id"
        )
        .await,
        json!([{"title": "Dune"}, {"title": "Arrival"}])
    );
    // Null filtering on embedded resources: anti-join and semi-join.
    let titles = |v: Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|r| r["title"].as_str().expect("title").to_owned())
            .collect()
    };
    assert_eq!(
        titles(
            ok(
                &s,
                "/films?select=title,nominations()&nominations=is.null&order=id"
            )
            .await
        ),
        ["Interstellar", "Arrival", "Memento"]
    );
    assert_eq!(
        titles(
            ok(
                &s,
                "/films?select=title,nominations()&nominations=not.is.null&order=id"
            )
            .await
        ),
        ["Inception", "Dune"]
    );
    // The embedding's own filters apply first.
    assert_eq!(
        ok(
            &s,
            "/films?select=title,nominations(competition)&nominations.competition=eq.baftas&nominations=not.is.null"
        )
        .await,
        json!([{"title": "Dune", "nominations": [{"competition": "baftas"}]}])
    );
    // In logic trees.
    assert_eq!(
        titles(
            ok(
                &s,
                "/films?select=title,technical_specs(camera)&or=(technical_specs.not.is.null,title.eq.Memento)&order=id"
            )
            .await
        ),
        ["Inception", "Dune", "Memento"]
    );
    // Ordering the top level by a to-one embedding's column.
    assert_eq!(
        titles(
            ok(
                &s,
                "/films?select=title,directors(last_name)&order=directors(last_name).desc,id"
            )
            .await
        ),
        ["Dune", "Arrival", "Inception", "Interstellar", "Memento"]
    );
    assert_body(
        &call(s.get("/directors?select=*,films(*)&order=films(title)")).await,
        400,
        json!({
            "code": "PGRST118",
            "message": "A related order on 'films' is not possible",
            "details": "'directors' and 'films' do not form a many-to-one or one-to-one relationship",
            "hint": null,
        }),
    );
    assert_body(
        &call(s.get("/films?select=title&order=directors(last_name)")).await,
        400,
        json!({
            "code": "PGRST108",
            "message": "'directors' is not an embedded resource in this request",
            "details": null,
            "hint": "Verify that 'directors' is included in the 'select' query parameter.",
        }),
    );
    assert_err(
        &call(s.get("/films?select=title&directors.id=eq.1")).await,
        400,
        "PGRST108",
    );
    // The first resource of the path that is not embedded is named.
    let (st, v) = call(s.get("/directors?select=id,films(id)&films.actors.limit=1")).await;
    assert_eq!(
        (st.as_u16(), &v["message"]),
        (
            400,
            &json!("'actors' is not an embedded resource in this request")
        )
    );
}

/// Resource Embedding → spread embedded resources (`...rel(cols)`, to-one).
#[tokio::test]
async fn spread() {
    let s = films_stack(&[]).await;
    assert_eq!(
        ok(
            &s,
            "/films?select=title,...directors(director:last_name,first_name)&id=eq.3"
        )
        .await,
        json!([{"title": "Dune", "director": "Villeneuve", "first_name": "Denis"}])
    );
    // Nested: a spread inside a spread, and a spread next to an embedding.
    assert_eq!(
        ok(
            &s,
            "/technical_specs?select=camera,...films(title,...directors(last_name)),films(year)&film_id=eq.1"
        )
        .await,
        json!([{"camera": "IMAX", "title": "Inception", "last_name": "Nolan", "films": {"year": 2010}}])
    );
    // A missing to-one row spreads as nulls.
    assert_eq!(
        ok(&s, "/films?select=id,...technical_specs(camera)&id=eq.2").await,
        json!([{"id": 2, "camera": null}])
    );
    // To-many cannot be spread in PostgREST 12.
    assert_body(
        &call(s.get("/directors?select=last_name,...films(title)")).await,
        400,
        json!({
            "code": "PGRST119",
            "message": "A spread operation on 'films' is not possible",
            "details": "'directors' and 'films' do not form a many-to-one or one-to-one relationship",
            "hint": null,
        }),
    );
}

/// Resource Embedding → disambiguation: PGRST201 lists every candidate
/// (sorted as PostgREST sorts relationships), PGRST200 when none fits.
#[tokio::test]
async fn ambiguity_and_missing() {
    let s = films_stack(&[]).await;
    assert_body(
        &call(s.get("/actors?select=films(title)")).await,
        300,
        json!({
            "code": "PGRST201",
            "message": "Could not embed because more than one relationship was found for 'actors' and 'films'",
            "details": [
                {
                    "cardinality": "many-to-many",
                    "embedding": "actors with films",
                    "relationship": "awards using awards_actor_id_fkey(actor_id) and awards_film_id_fkey(film_id)",
                },
                {
                    "cardinality": "many-to-many",
                    "embedding": "actors with films",
                    "relationship": "roles using roles_actor_id_fkey(actor_id) and roles_film_id_fkey(film_id)",
                },
            ],
            "hint": "Try changing 'films' to one of the following: 'films!awards', 'films!roles'. Find the desired relationship in the 'details' key.",
        }),
    );
    assert_body(
        &call(s.get("/films?select=title,actors!nope(last_name)")).await,
        400,
        json!({
            "code": "PGRST200",
            "message": "Could not find a relationship between 'films' and 'actors' in the schema cache",
            "details": "Searched for a foreign key relationship between 'films' and 'actors' using the hint 'nope' in the schema 'public', but no matches were found.",
            // The closest other relationship of 'films' (PostgREST's fuzzy set).
            "hint": "Perhaps you meant 'directors' instead of 'actors'.",
        }),
    );
    assert_body(
        &call(s.get("/films?select=title,director(last_name)")).await,
        400,
        json!({
            "code": "PGRST200",
            "message": "Could not find a relationship between 'films' and 'director' in the schema cache",
            "details": "Searched for a foreign key relationship between 'films' and 'director' in the schema 'public', but no matches were found.",
            "hint": "Perhaps you meant 'directors' instead of 'director'.",
        }),
    );
    // A hint that is a column of the key on either side.
    assert_eq!(
        ok(
            &s,
            "/films?select=title,directors!director_id(last_name)&id=eq.1"
        )
        .await,
        json!([{"title": "Inception", "directors": {"last_name": "Nolan"}}])
    );
    assert_eq!(
        ok(&s, "/films?select=title,directors!id(last_name)&id=eq.1").await,
        json!([{"title": "Inception", "directors": {"last_name": "Nolan"}}])
    );
}

/// Computed Fields and Resource Embedding → computed relationships:
/// functions taking a table's row type, in `select`, filters, order and
/// embeddings.
#[tokio::test]
async fn computed_fields_and_relationships() {
    let s = films_stack(&[]).await;
    assert_eq!(
        ok(&s, "/directors?select=id,full_name&order=id").await,
        json!([{"id": 1, "full_name": "Christopher Nolan"}, {"id": 2, "full_name": "Denis Villeneuve"}])
    );
    assert_eq!(
        ok(&s, "/directors?select=id&full_name=like.Denis*").await,
        json!([{"id": 2}])
    );
    assert_eq!(
        ok(&s, "/directors?select=id&order=full_name.desc").await,
        json!([{"id": 2}, {"id": 1}])
    );
    // Not part of `*`.
    let v = ok(&s, "/directors?select=*&id=eq.1").await;
    assert!(v[0].get("full_name").is_none(), "{v}");
    // Inside an embedding.
    assert_eq!(
        ok(&s, "/films?select=title,directors(full_name)&id=eq.1").await,
        json!([{"title": "Inception", "directors": {"full_name": "Christopher Nolan"}}])
    );
    // Computed relationships: SETOF is to-many, ROWS 1 to-one.
    assert_eq!(
        ok(
            &s,
            "/directors?select=last_name,directed(title)&id=eq.2&directed.order=id"
        )
        .await,
        json!([{"last_name": "Villeneuve", "directed": [{"title": "Dune"}, {"title": "Arrival"}]}])
    );
    assert_eq!(
        ok(&s, "/films?select=title,maker(last_name)&id=eq.3").await,
        json!([{"title": "Dune", "maker": {"last_name": "Villeneuve"}}])
    );
    assert_eq!(
        ok(
            &s,
            "/directors?select=last_name,directed!inner(title)&directed.title=eq.Dune"
        )
        .await,
        json!([{"last_name": "Villeneuve", "directed": [{"title": "Dune"}]}])
    );
    assert_eq!(
        ok(&s, "/films?select=title,...maker(full_name)&id=eq.5").await,
        json!([{"title": "Memento", "full_name": "Christopher Nolan"}])
    );
    // Written rows (return=representation) have them too.
    let (st, v) = call(
        s.service(
            http::Method::POST,
            "/directors?select=full_name,directed(title)",
        )
        .header("Prefer", "return=representation")
        .json(&json!({"id": 3, "first_name": "Greta", "last_name": "Gerwig"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v, json!([{"full_name": "Greta Gerwig", "directed": []}]));
}

/// API → Tables and Views → JSON columns, renames and casts, inside
/// embeddings: JSON paths in `select`, embedded filters and related orders.
#[tokio::test]
async fn json_paths_renames_and_casts_in_embeds() {
    let s = films_stack(&[]).await;
    assert_eq!(
        ok(
            &s,
            "/films?select=name:title,year::text,directors(born:meta->>born,meta->awards->0,surname:last_name)&id=eq.1"
        )
        .await,
        json!([{"name": "Inception", "year": "2010", "directors": {"born": "1970", "0": "oscar", "surname": "Nolan"}}])
    );
    assert_eq!(
        ok(
            &s,
            "/films?select=title,directors!inner(last_name)&directors.meta->born=eq.1967&order=id"
        )
        .await,
        json!([
            {"title": "Dune", "directors": {"last_name": "Villeneuve"}},
            {"title": "Arrival", "directors": {"last_name": "Villeneuve"}},
        ])
    );
    assert_eq!(
        ok(&s, "/directors?select=last_name&order=meta->>born.desc").await,
        json!([{"last_name": "Nolan"}, {"last_name": "Villeneuve"}])
    );
    assert_eq!(
        ok(
            &s,
            "/films?select=id,directors(id)&order=directors(meta->>born).asc,id.desc&limit=3"
        )
        .await,
        json!([
            {"id": 4, "directors": {"id": 2}},
            {"id": 3, "directors": {"id": 2}},
            {"id": 5, "directors": {"id": 1}},
        ])
    );
}
