-- Every change of a tenant row (create, activate, key rotation, settings,
-- delete) is announced on the `madbase_tenant_changes` channel with the
-- tenant's id, at commit. Control relays the channel to the services'
-- tenant caches (GET /internal/v1/changes), so a rotated or deleted key is
-- refused at once instead of when a cache entry expires.
CREATE FUNCTION madbase_notify_tenant_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('madbase_tenant_changes', COALESCE(NEW.id, OLD.id));
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_notify_change
AFTER INSERT OR UPDATE OR DELETE ON tenants
FOR EACH ROW EXECUTE FUNCTION madbase_notify_tenant_change();
