-- Tenant settings: the browser origins the proxy allows for the tenant's
-- data API (NULL: the platform's MADBASE_CORS_ORIGINS; '{*}': any origin).
ALTER TABLE tenants ADD COLUMN cors_origins text[];
