//! Creating and dropping a tenant's database and roles on the tenant cluster.
//!
//! Identifiers come only from a validated tenant id (`^[a-z][a-z0-9-]{2,39}$`,
//! hyphens mapped to underscores, which the id cannot contain, so the mapping
//! is one-to-one) and passwords only from our own hex generator, so the DDL
//! that cannot take bind parameters never contains user input.

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection as _, Executor as _, PgConnection};

/// The cluster-wide API roles, shared by all tenants (Postgres roles are global).
pub const API_ROLES: [&str; 3] = ["anon", "authenticated", "service_role"];

/// Names of one tenant's database objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub database: String,
    pub owner: String,
    pub authenticator: String,
}

impl Names {
    pub fn for_tenant(id: &str) -> Self {
        let base = format!("tenant_{}", id.replace('-', "_"));
        Names {
            owner: format!("{base}_owner"),
            authenticator: format!("{base}_authenticator"),
            database: base,
        }
    }
}

/// Reserved tenant ids.
pub const RESERVED: [&str; 16] = [
    "admin",
    "api",
    "internal",
    "www",
    "postgres",
    "template0",
    "template1",
    "madbase",
    "control",
    "proxy",
    "worker",
    "functions",
    "rest",
    "auth",
    "public",
    "system",
];

/// Why an id is not acceptable, or `None`.
pub fn invalid_id(id: &str) -> Option<String> {
    if !madbase_tenancy::is_valid_id(id) {
        return Some(
            "id must match ^[a-z][a-z0-9-]{2,39}$ (3 to 40 lowercase letters, digits or hyphens, starting with a letter)"
                .to_owned(),
        );
    }
    if RESERVED.contains(&id) {
        return Some(format!("id {id:?} is reserved"));
    }
    None
}

/// Everything created for a tenant.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub names: &'a Names,
    pub owner_password: &'a str,
    pub authenticator_password: &'a str,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Creates the API roles if missing (safe under concurrent creates).
async fn ensure_api_roles(admin: &PgPool) -> Result<(), sqlx::Error> {
    for role in API_ROLES {
        let attrs = if role == "service_role" {
            "NOLOGIN NOINHERIT BYPASSRLS"
        } else {
            "NOLOGIN NOINHERIT"
        };
        admin
            .execute(
                format!(
                    "DO $$ BEGIN CREATE ROLE {} {attrs}; \
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
                    ident(role)
                )
                .as_str(),
            )
            .await?;
    }
    Ok(())
}

/// Creates roles and database, then prepares the database the way Supabase
/// does. On error the caller runs [`drop_all`].
pub async fn create(
    admin: &PgPool,
    cluster: &PgConnectOptions,
    plan: &Plan<'_>,
    done: &mut Progress,
) -> Result<(), sqlx::Error> {
    let n = plan.names;
    ensure_api_roles(admin).await?;
    admin
        .execute(
            format!(
                "CREATE ROLE {} LOGIN PASSWORD {}",
                ident(&n.owner),
                literal(plan.owner_password)
            )
            .as_str(),
        )
        .await?;
    done.owner = true;
    admin
        .execute(
            format!(
                "CREATE DATABASE {} OWNER {}",
                ident(&n.database),
                ident(&n.owner)
            )
            .as_str(),
        )
        .await?;
    done.database = true;
    admin
        .execute(
            format!(
                "REVOKE ALL ON DATABASE {db} FROM PUBLIC; \
                 GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {owner}",
                db = ident(&n.database),
                owner = ident(&n.owner)
            )
            .as_str(),
        )
        .await?;
    admin
        .execute(
            format!(
                "CREATE ROLE {auth} LOGIN NOINHERIT PASSWORD {pw}",
                auth = ident(&n.authenticator),
                pw = literal(plan.authenticator_password),
            )
            .as_str(),
        )
        .await?;
    done.authenticator = true;
    admin
        .execute(
            format!(
                "GRANT anon, authenticated, service_role TO {auth}; \
                 GRANT CONNECT ON DATABASE {db} TO {auth}",
                auth = ident(&n.authenticator),
                db = ident(&n.database),
            )
            .as_str(),
        )
        .await?;

    // Inside the new database, as the cluster superuser.
    let mut conn = PgConnection::connect_with(&cluster.clone().database(&n.database)).await?;
    let owner = ident(&n.owner);
    let setup = format!(
        r#"
        GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
        ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
            GRANT ALL ON TABLES TO anon, authenticated, service_role;
        ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
            GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
        ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
            GRANT EXECUTE ON FUNCTIONS TO anon, authenticated, service_role;
        CREATE SCHEMA auth AUTHORIZATION {owner};
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
        CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $f$
            SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{{}}')::jsonb
        $f$;
        CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $f$
            SELECT nullif(coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                auth.jwt() ->> 'sub'), '')::uuid
        $f$;
        CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                auth.jwt() ->> 'role')
        $f$;
        ALTER FUNCTION auth.jwt() OWNER TO {owner};
        ALTER FUNCTION auth.uid() OWNER TO {owner};
        ALTER FUNCTION auth.role() OWNER TO {owner};
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA auth TO anon, authenticated, service_role;
        "#
    );
    let result = conn.execute(setup.as_str()).await;
    let _ = conn.close().await;
    result.map(|_| ())
}

/// What a [`create`] made before it stopped, so a failure undoes exactly
/// that and never an object that existed before (another install's on a
/// shared cluster, say).
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    owner: bool,
    database: bool,
    authenticator: bool,
}

/// Undoes what a failed [`create`] made.
pub async fn undo(admin: &PgPool, names: &Names, done: Progress) -> Result<(), sqlx::Error> {
    if done.database {
        drop_database(admin, &names.database).await?;
    }
    for (made, role) in [
        (done.authenticator, &names.authenticator),
        (done.owner, &names.owner),
    ] {
        if made {
            drop_role(admin, role).await?;
        }
    }
    Ok(())
}

/// Drops the tenant's database (terminating its connections) and roles.
/// Idempotent: missing objects are fine.
pub async fn drop_all(admin: &PgPool, names: &Names) -> Result<(), sqlx::Error> {
    drop_database(admin, &names.database).await?;
    for role in [&names.authenticator, &names.owner] {
        drop_role(admin, role).await?;
    }
    Ok(())
}

async fn drop_database(admin: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    admin
        .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name)).as_str())
        .await?;
    Ok(())
}

async fn drop_role(admin: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    admin
        .execute(format!("DROP ROLE IF EXISTS {}", ident(name)).as_str())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert_eq!(invalid_id("acme"), None);
        assert_eq!(invalid_id("a-b-c9"), None);
        for bad in [
            "ab",
            "1abc",
            "Acme",
            "acme_co",
            "acme.co",
            "",
            &"a".repeat(41),
            "ac me",
            "admin",
            "postgres",
        ] {
            assert!(invalid_id(bad).is_some(), "{bad}");
        }
        let n = Names::for_tenant("acme-co");
        assert_eq!(n.database, "tenant_acme_co");
        assert_eq!(n.owner, "tenant_acme_co_owner");
        assert_eq!(n.authenticator, "tenant_acme_co_authenticator");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
