-- Tenants and their encrypted secrets. A row exists from the moment a
-- create starts (status 'creating': the primary key makes concurrent creates
-- of one id conflict) until its delete finishes.
CREATE TABLE tenants (
    id text PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9-]{2,39}$'),
    status text NOT NULL DEFAULT 'creating' CHECK (status IN ('creating', 'active', 'deleting')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    database_name text NOT NULL,
    owner_role text NOT NULL,
    authenticator_role text NOT NULL,
    -- AES-256-GCM under MADBASE_MASTER_KEY: 12-byte nonce || ciphertext+tag.
    jwt_secret_enc bytea NOT NULL,
    owner_password_enc bytea NOT NULL,
    authenticator_password_enc bytea NOT NULL,
    key_version integer NOT NULL DEFAULT 1
);

-- Control-plane facts, e.g. the master-key check value that makes a wrong
-- MADBASE_MASTER_KEY fail at start instead of at first use.
CREATE TABLE control_meta (
    key text PRIMARY KEY,
    value bytea NOT NULL
);
