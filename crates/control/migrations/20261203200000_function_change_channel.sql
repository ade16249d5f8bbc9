-- Function, version, secret and limit changes get their own channel
-- (`madbase_function_changes`, payload: the tenant's id). On the tenants'
-- channel they made every service drop the tenant itself (keys, settings,
-- verified tokens), so the first request after a deploy waited for control
-- twice; only the functions service's code and env depend on them.
CREATE OR REPLACE FUNCTION madbase_notify_tenant_child_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('madbase_function_changes', COALESCE(NEW.tenant_id, OLD.tenant_id));
    RETURN NULL;
END
$$;
