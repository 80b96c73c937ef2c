// The daily purge and erasure select a tenant's soft-deleted nodes by age.
CREATE INDEX document_deleted_at IF NOT EXISTS FOR (d:Document) ON (d.tenant_id, d.deleted_at);
CREATE INDEX chunk_deleted_at IF NOT EXISTS FOR (c:Chunk) ON (c.tenant_id, c.deleted_at);
CREATE INDEX fact_deleted_at IF NOT EXISTS FOR (f:Fact) ON (f.tenant_id, f.deleted_at);
