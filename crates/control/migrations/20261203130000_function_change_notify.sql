-- Deploys, deletes and secret changes are announced like tenant changes
-- (channel `madbase_tenant_changes`, payload: the tenant's id), so the
-- functions service drops the tenant's cached code and env at once.
CREATE FUNCTION madbase_notify_tenant_child_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('madbase_tenant_changes', COALESCE(NEW.tenant_id, OLD.tenant_id));
    RETURN NULL;
END
$$;

CREATE TRIGGER functions_notify_change
AFTER INSERT OR UPDATE OR DELETE ON functions
FOR EACH ROW EXECUTE FUNCTION madbase_notify_tenant_child_change();

CREATE TRIGGER function_secrets_notify_change
AFTER INSERT OR UPDATE OR DELETE ON function_secrets
FOR EACH ROW EXECUTE FUNCTION madbase_notify_tenant_child_change();

CREATE TRIGGER function_versions_notify_change
AFTER INSERT OR UPDATE OR DELETE ON function_versions
FOR EACH ROW EXECUTE FUNCTION madbase_notify_tenant_child_change();
