-- The `_id` index MongoDB always has, given to FerretDB v1's PostgreSQL backend (ADR 0018).
--
-- FerretDB v1 stores each collection as a table with one `_jsonb` column and pushes an
-- equality filter down as `_jsonb->$1 @> $2`. The unique btree index it makes on
-- `(_jsonb->'_id')` checks inserts but cannot serve `@>`, so every read or update by `_id`
-- was a sequential scan that detoasted every stored document (12 ms per lookup at 20,000
-- notifications, growing with the history). A GIN index on the same expression serves `@>`,
-- once the planner sees the key `'_id'` as a constant: FerretDB's driver caches prepared
-- statements, whose generic plans keep `$1` a parameter, so this database plans every query
-- for its values (`plan_cache_mode`). Measured: 12 ms -> 0.5 ms per `find_one({_id})`.
--
-- Run by `deploy/local/stack.sh` against the `ferretdb` database on every `infra-up`; every
-- statement is idempotent. Only the native stack needs it: compose and Helm run MongoDB.

SET client_min_messages = warning;

ALTER DATABASE ferretdb SET plan_cache_mode = force_custom_plan;

-- The index of one table, if it is one of FerretDB's (it has the `_jsonb` column).
CREATE OR REPLACE FUNCTION shop_ferretdb_index_id(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT FROM pg_attribute
             WHERE attrelid = target AND attname = '_jsonb' AND NOT attisdropped) THEN
    EXECUTE format(
      'CREATE INDEX IF NOT EXISTS %I ON %s USING gin ((_jsonb -> ''_id'') jsonb_path_ops) WITH (fastupdate = off)',
      left((SELECT relname FROM pg_class WHERE oid = target), 50) || '_id_gin', target);
  END IF;
END $$;

-- Every table FerretDB creates from now on (a new collection, a new day of notifications)
-- gets it in the same transaction as the table itself.
CREATE OR REPLACE FUNCTION shop_ferretdb_index_new_tables() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
  created record;
BEGIN
  FOR created IN SELECT objid FROM pg_event_trigger_ddl_commands()
                 WHERE command_tag = 'CREATE TABLE' AND object_type = 'table' LOOP
    PERFORM shop_ferretdb_index_id(created.objid::regclass);
  END LOOP;
END $$;

DROP EVENT TRIGGER IF EXISTS shop_ferretdb_id_index;
CREATE EVENT TRIGGER shop_ferretdb_id_index ON ddl_command_end
  WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION shop_ferretdb_index_new_tables();

-- And the tables a state from before this file already holds.
SELECT shop_ferretdb_index_id(c.oid::regclass)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema');
