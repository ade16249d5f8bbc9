-- Per-tenant overrides of the functions service's limits (issue 21): a
-- NULL column (or no row) means the platform's default
-- (MADBASE_FUNCTIONS_CPU_MS, _WALL_SECONDS, _MEMORY_MB,
-- _TENANT_CONCURRENCY). Served with each function on the internal
-- function endpoint; a change is announced on the tenant change feed like
-- a deploy, so the next invocation runs with it.
CREATE TABLE function_limits (
    tenant_id text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    cpu_ms bigint CHECK (cpu_ms BETWEEN 1 AND 3600000),
    wall_seconds bigint CHECK (wall_seconds BETWEEN 1 AND 86400),
    memory_mb bigint CHECK (memory_mb BETWEEN 1 AND 65536),
    max_concurrent bigint CHECK (max_concurrent BETWEEN 1 AND 100000),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER function_limits_notify_change
AFTER INSERT OR UPDATE OR DELETE ON function_limits
FOR EACH ROW EXECUTE FUNCTION madbase_notify_tenant_child_change();
