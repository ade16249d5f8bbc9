-- Tenants' function secrets (issue 21): what functions read with
-- `Deno.env.get(name)`. Values are sealed with MADBASE_MASTER_KEY
-- (AES-256-GCM, nonce || ciphertext) like the tenants' own secrets; the
-- admin API lists names only. Deleting the tenant row removes them.
CREATE TABLE function_secrets (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[A-Z_][A-Z0-9_]{0,127}$' AND name NOT LIKE 'SUPABASE\_%'),
    value_enc bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
