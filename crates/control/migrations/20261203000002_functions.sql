-- Tenants' edge functions (issue 21): one row per deployed function, its
-- current version; the last 10 versions in function_versions. Deleting the
-- tenant row removes both.
CREATE TABLE functions (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    version integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE function_versions (
    tenant_id text NOT NULL,
    name text NOT NULL,
    version integer NOT NULL,
    source text NOT NULL,
    -- hex SHA-256 of the source's UTF-8 bytes
    sha256 text NOT NULL,
    size integer NOT NULL,
    verify_jwt boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, version),
    FOREIGN KEY (tenant_id, name) REFERENCES functions (tenant_id, name) ON DELETE CASCADE
);
