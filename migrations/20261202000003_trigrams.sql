-- Duplicate work: the Conductor compares open tasks' titles and descriptions by trigram
-- similarity (`pg_trgm`, trusted since PostgreSQL 13: a database owner may create it).
-- The directory read model indexes its tasks' text with it.
create extension if not exists pg_trgm;
