//! Change capture on PostgreSQL: one trigger function per registered table, fired
//! after every row's insert, update and delete and before a `TRUNCATE`, appending to the
//! log in the writer's own transaction whatever path made the write (the app's
//! `sqlx::query!`, `psql`, a migration, another service). Entries are written without
//! a version; [`super::stamp`] numbers them once they are committed.
//!
//! `ON CONFLICT DO UPDATE` fires the update trigger and `ON DELETE CASCADE` the delete
//! trigger of the referencing table, so both are captured without special cases;
//! PostgreSQL has no `REPLACE` that deletes a row unseen.
//!
//! The functions read the row through `to_jsonb(NEW)`, not `NEW.column`: a column that
//! a migration drops or renames then reads as null instead of failing the app's writes
//! until the engine restarts. They run as their owner (`SECURITY DEFINER`), so a role
//! that may write the app's table need not be granted the log.

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::SCHEMA_LOCK;
use crate::entity::{quote_ident, quote_literal, ColumnKind, Entity};
use crate::error::Result;

/// Integers beyond ±(2^53 − 1) travel as strings: a browser's JSON numbers would round
/// them (as on SQLite).
const SAFE_INTEGER: &str = "9007199254740991";

/// The row trigger's name on every registered table.
const ROW_TRIGGER: &str = "_rhtmx_sync_capture";
/// The statement trigger's name, for `TRUNCATE`.
const TRUNCATE_TRIGGER: &str = "_rhtmx_sync_truncate";

/// `_rhtmx_sync_capture_<hash of the table name>`: one per table, whatever its name's
/// length or characters.
fn function_name(table: &str) -> String {
    let hash = Sha256::digest(table.as_bytes());
    let hex: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("_rhtmx_sync_capture_{hex}")
}

/// The JSON text of field `name` of the jsonb row `row`, as clients see it.
fn value_json(kind: ColumnKind, row: &str, name: &str) -> String {
    let v = format!("({row} -> {})", quote_literal(name));
    let text = format!("({row} ->> {})", quote_literal(name));
    match kind {
        ColumnKind::Integer => format!(
            "CASE WHEN jsonb_typeof({v}) = 'number' AND abs({text}::numeric) > {SAFE_INTEGER} \
             THEN to_jsonb({text})::text ELSE COALESCE({v}::text, 'null') END"
        ),
        // A `numeric` a browser's number would round travels as a string; one beyond
        // a double's range is tested first (CASE stops at the first match), since the
        // cast to float8 would fail the app's write.
        ColumnKind::Numeric => format!(
            "CASE WHEN jsonb_typeof({v}) IS DISTINCT FROM 'number' \
             THEN COALESCE({v}::text, 'null') \
             WHEN abs({text}::numeric) > 1.7e308 THEN to_jsonb({text})::text \
             WHEN {text}::numeric <> 0 AND abs({text}::numeric) < 1e-323 \
             THEN to_jsonb({text})::text \
             WHEN {text}::numeric <> ({text}::float8)::numeric THEN to_jsonb({text})::text \
             ELSE {v}::text END"
        ),
        // Only `bytea` reads as BLOB here: it travels in the blob text form (a 16-byte
        // value as a UUID, any other as lowercase hex), as on SQLite.
        ColumnKind::Any => format!(
            "CASE WHEN {v} IS NULL OR {v} = 'null' THEN 'null' \
             WHEN left({text}, 2) = '\\x' AND length({text}) = 34 \
             THEN to_jsonb(substr({text}, 3)::uuid::text)::text \
             WHEN left({text}, 2) = '\\x' THEN to_jsonb(substr({text}, 3))::text \
             ELSE {v}::text END"
        ),
        _ => format!("COALESCE({v}::text, 'null')"),
    }
}

/// The text of a key or scope field of the jsonb row `row` (`NULL` when missing).
pub(super) fn key_text(row: &str, name: &str, kind: ColumnKind) -> String {
    let text = format!("({row} ->> {})", quote_literal(name));
    if kind == ColumnKind::Any {
        format!(
            "CASE WHEN left({text}, 2) = '\\x' AND length({text}) = 34 \
             THEN substr({text}, 3)::uuid::text \
             WHEN left({text}, 2) = '\\x' THEN substr({text}, 3) ELSE {text} END"
        )
    } else {
        text
    }
}

/// The row's JSON object as text, fields in column order (compact, as on SQLite).
pub(super) fn row_json(entity: &Entity, row: &str) -> String {
    let parts: Vec<String> = entity
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let comma = if i == 0 { "" } else { "," };
            let key = serde_json::to_string(&c.name).expect("a string serializes");
            format!(
                "{} || {}",
                quote_literal(&format!("{comma}{key}:")),
                value_json(c.kind, row, &c.name)
            )
        })
        .collect();
    // Groups keep the expression shallow for a wide table.
    let groups: Vec<String> = parts
        .chunks(40)
        .map(|g| format!("({})", g.join(" || ")))
        .collect();
    format!("('{{' || {} || '}}')", groups.join(" || "))
}

pub(super) fn kind_of(entity: &Entity, column: &str) -> ColumnKind {
    entity.column(column).map_or(ColumnKind::Text, |c| c.kind)
}

/// `CREATE OR REPLACE FUNCTION` for `entity`'s trigger function, its tables qualified
/// with `schema` (the one the engine's tables live in).
fn function(entity: &Entity, schema: &str, oid: i64) -> (String, String) {
    let log = format!("{}._rhtmx_sync_log", quote_ident(schema));
    let context = format!("{}._rhtmx_sync_context", quote_ident(schema));
    let ent = quote_literal(&entity.table);
    let key_kind = kind_of(entity, &entity.id);
    let old_key = key_text("_o", &entity.id, key_kind);
    let new_key = key_text("_n", &entity.id, key_kind);
    let (scope_old, scope_new) = match entity.scope_column() {
        Some(c) => (
            key_text("_o", c, kind_of(entity, c)),
            key_text("_n", c, kind_of(entity, c)),
        ),
        None => ("NULL".to_owned(), "NULL".to_owned()),
    };
    let changed_items: Vec<String> = entity
        .columns
        .iter()
        .filter(|c| c.name != entity.id)
        .map(|c| {
            let name = quote_literal(&c.name);
            format!(
                "CASE WHEN (_o -> {name}) IS DISTINCT FROM (_n -> {name}) \
                 OR COALESCE(_c_changed::jsonb ? {name}, false) THEN {} END",
                quote_literal(&serde_json::to_string(&c.name).expect("a string serializes"))
            )
        })
        .collect();
    let changed = if changed_items.is_empty() {
        "'[]'".to_owned()
    } else {
        format!(
            "'[' || array_to_string(ARRAY[{}]::text[], ',') || ']'",
            changed_items.join(", ")
        )
    };
    let cols = "entity, entity_id, action, data, changed, client_id, hlc, conflict, digest, \
                scope_before, scope_after";
    let ctx = "_c_client, _c_hlc, _c_conflict, _c_digest";
    let body = format!(
        r#"
DECLARE
    _o jsonb; _n jsonb; _ok text; _nk text; _od text; _nd text;
    _c_client text; _c_hlc text; _c_conflict text; _c_digest text; _c_changed text;
BEGIN
    -- Only the table it was made for, or one of its partitions (it runs with its
    -- owner's rights; only the table's owner can add a partition).
    IF TG_RELID <> {oid}::oid
       AND NOT {oid}::oid::regclass IN (SELECT pg_partition_ancestors(TG_RELID)) THEN
        -- A partition detached since keeps its TRUNCATE trigger until the engine
        -- removes it: its rows are no longer the table's.
        IF TG_OP = 'TRUNCATE' THEN RETURN NULL; END IF;
        RAISE EXCEPTION 'rhtmx-sync: this capture function belongs to table %', {ent};
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        -- A partitioned table's own TRUNCATE fires its partitions' too: each leaf logs
        -- its rows, whether truncated through the table or alone.
        IF (SELECT relkind FROM pg_class WHERE oid = TG_RELID) = 'p' THEN
            RETURN NULL;
        END IF;
        EXECUTE {truncate_head} || TG_RELID::regclass::text || ' AS _t) AS _rows';
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN _o := to_jsonb(OLD); _ok := {old_key}; END IF;
    IF TG_OP <> 'DELETE' THEN _n := to_jsonb(NEW); _nk := {new_key}; _nd := {new_row}; END IF;
    IF TG_OP = 'UPDATE' THEN
        _od := {old_row};
        -- An update that changes no synced column is not logged.
        IF _od = _nd THEN RETURN NULL; END IF;
    END IF;
    IF _ok IS NOT NULL AND _ok IS DISTINCT FROM _nk THEN
        SELECT client_id, hlc, conflict, digest INTO _c_client, _c_hlc, _c_conflict, _c_digest
            FROM {context} WHERE entity = {ent} AND entity_id = _ok;
        INSERT INTO {log} ({cols})
            VALUES ({ent}, _ok, 'delete', NULL, NULL, {ctx}, {scope_old}, NULL);
    END IF;
    IF _nk IS NOT NULL THEN
        SELECT client_id, hlc, conflict, digest, changed
            INTO _c_client, _c_hlc, _c_conflict, _c_digest, _c_changed
            FROM {context} WHERE entity = {ent} AND entity_id = _nk;
        IF _ok IS NOT DISTINCT FROM _nk THEN
            INSERT INTO {log} ({cols})
                VALUES ({ent}, _nk, 'update', _nd, {changed}, {ctx}, {scope_old}, {scope_new});
        ELSE
            -- A row under a new key is a new row: it had no scope before.
            INSERT INTO {log} ({cols})
                VALUES ({ent}, _nk, 'create', _nd, NULL, {ctx}, NULL, {scope_new});
        END IF;
    END IF;
    RETURN NULL;
END
"#,
        truncate_head = quote_literal(&format!(
            "INSERT INTO {log} (entity, entity_id, action, scope_before) \
             SELECT {ent}, {all_key}, 'delete', {all_scope} \
             FROM (SELECT to_jsonb(_t) AS _o FROM ",
            all_key = key_text("_rows._o", &entity.id, key_kind),
            all_scope = match entity.scope_column() {
                Some(c) => key_text("_rows._o", c, kind_of(entity, c)),
                None => "NULL".to_owned(),
            },
        )),
        new_row = row_json(entity, "_n"),
        old_row = row_json(entity, "_o"),
    );
    // A dollar-quote tag no column name can end early: it names the body's own hash.
    let tag = format!(
        "$rhtmx_{}$",
        &function_name(&body)["_rhtmx_sync_capture_".len()..]
    );
    let sql = format!(
        "CREATE OR REPLACE FUNCTION {}.{}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
         SET search_path = pg_catalog, pg_temp {PINNED} AS {tag}{body}{tag}",
        quote_ident(schema),
        quote_ident(&function_name(&entity.table)),
    );
    (sql, body)
}

/// The session settings a row's JSON depends on, pinned wherever the engine builds it
/// (the trigger functions, reconciliation, the merge's reads), so that every writer's
/// session logs the same text: `bytea` as hex, times in UTC and ISO 8601, floats in
/// their shortest exact form.
const PINNED: &str = "SET bytea_output = 'hex' SET timezone = 'UTC' SET datestyle = 'ISO, YMD' \
     SET intervalstyle = 'postgres' SET extra_float_digits = 1";

/// [`PINNED`] for the rest of the current transaction.
pub(crate) async fn pin(conn: &mut PgConnection) -> Result<()> {
    sqlx::query(
        "SELECT set_config('bytea_output', 'hex', true), set_config('timezone', 'UTC', true), \
         set_config('datestyle', 'ISO, YMD', true), set_config('intervalstyle', 'postgres', true), \
         set_config('extra_float_digits', '1', true)",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The schema the engine's tables were created in (the connection's current schema).
pub(crate) async fn log_schema(conn: &mut PgConnection) -> Result<String> {
    Ok(sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = to_regclass('_rhtmx_sync_log')",
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Installs (or brings up to date) the capture of every entity, then logs what the
/// triggers did not see (see [`reconcile`]). Engines starting together take turns under
/// [`SCHEMA_LOCK`]; one whose definitions are already in place changes nothing.
pub(crate) async fn install(
    conn: &mut PgConnection,
    entities: &[std::sync::Arc<Entity>],
) -> Result<()> {
    let schema = log_schema(conn).await?;
    let mut tx = super::begin_read_committed(conn).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    pin(&mut tx).await?;
    for entity in entities {
        let fname = function_name(&entity.table);
        let oid: i64 = sqlx::query_scalar("SELECT to_regclass(quote_ident($1))::oid::int8")
            .bind(&entity.table)
            .fetch_one(&mut *tx)
            .await?;
        let (want, body) = function(entity, &schema, oid);
        let current: Option<String> = sqlx::query_scalar(
            "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = $1 AND p.proname = $2",
        )
        .bind(&schema)
        .bind(&fname)
        .fetch_optional(&mut *tx)
        .await?;
        let triggers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(quote_ident($1)) \
             AND tgname IN ($2, $3) AND tgenabled = 'A'",
        )
        .bind(&entity.table)
        .bind(ROW_TRIGGER)
        .bind(TRUNCATE_TRIGGER)
        .fetch_one(&mut *tx)
        .await?;
        let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&fname));
        let leaves = partitions_to_watch(&mut tx, oid).await?;
        let stale = detached(&mut tx, oid, &qualified).await?;
        if current.as_deref() == Some(body.as_str())
            && triggers == 2
            && leaves.is_empty()
            && stale.is_empty()
        {
            // In place: still, what was written while no engine ran (or by a path no
            // trigger sees, such as a partition detached) is logged.
            let logged = reconcile(&mut tx, entity).await?;
            if logged > 0 {
                tracing::info!(
                    entity = entity.table,
                    reconciled = logged,
                    "reconciled the log"
                );
            }
            continue;
        }
        let table = quote_ident(&entity.table);
        sqlx::query(&want).execute(&mut *tx).await?;
        // Only triggers may run it: a role that could attach it to a table of its own
        // would write the log with the owner's rights.
        sqlx::query(&format!("REVOKE ALL ON FUNCTION {qualified}() FROM PUBLIC"))
            .execute(&mut *tx)
            .await?;
        // The table lock these take also holds the app's writes back until the
        // reconciliation below commits: no write falls between the two.
        sqlx::query(&format!(
            "CREATE OR REPLACE TRIGGER {ROW_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION {qualified}()"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "CREATE OR REPLACE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {table} \
             FOR EACH STATEMENT EXECUTE FUNCTION {qualified}()"
        ))
        .execute(&mut *tx)
        .await?;
        // Also under `session_replication_role = replica`: a logical-replication
        // subscriber's writes are the app's writes too.
        for trigger in [ROW_TRIGGER, TRUNCATE_TRIGGER] {
            sqlx::query(&format!(
                "ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}"
            ))
            .execute(&mut *tx)
            .await?;
        }
        // A row trigger reaches every partition (PostgreSQL clones it), a TRUNCATE
        // trigger only its own table: each leaf partition gets one.
        for leaf in partitions_to_watch(&mut tx, oid).await? {
            sqlx::query(&format!(
                "CREATE OR REPLACE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {leaf} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {qualified}()"
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "ALTER TABLE {leaf} ENABLE ALWAYS TRIGGER {TRUNCATE_TRIGGER}"
            ))
            .execute(&mut *tx)
            .await?;
        }
        for table in detached(&mut tx, oid, &qualified).await? {
            sqlx::query(&format!("DROP TRIGGER {TRUNCATE_TRIGGER} ON {table}"))
                .execute(&mut *tx)
                .await?;
        }
        let logged = reconcile(&mut tx, entity).await?;
        tracing::info!(
            entity = entity.table,
            reconciled = logged,
            "installed the change-capture triggers"
        );
    }
    tx.commit().await?;
    Ok(())
}

/// The leaf partitions of the table `oid` (qualified names) whose TRUNCATE the capture
/// does not see yet: none for a table that is not partitioned.
async fn partitions_to_watch(conn: &mut PgConnection, oid: i64) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT p.relid::regclass::text FROM pg_partition_tree($1::oid::regclass) AS p \
         WHERE p.isleaf AND p.relid <> $1::oid::regclass \
         AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p.relid \
                         AND t.tgname = $2 AND t.tgenabled = 'A')",
    )
    .bind(oid)
    .bind(TRUNCATE_TRIGGER)
    .fetch_all(&mut *conn)
    .await?)
}

/// The tables, once partitions of the table `oid`, that still have its TRUNCATE trigger
/// (calling `function`, qualified) though they left it.
async fn detached(conn: &mut PgConnection, oid: i64, function: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT t.tgrelid::regclass::text FROM pg_trigger t \
         WHERE t.tgname = $2 AND t.tgfoid = to_regprocedure($3 || '()') \
         AND t.tgrelid <> $1::oid \
         AND t.tgrelid NOT IN (SELECT relid FROM pg_partition_tree($1::oid::regclass))",
    )
    .bind(oid)
    .bind(TRUNCATE_TRIGGER)
    .bind(function)
    .fetch_all(&mut *conn)
    .await?)
}

/// Logs what the triggers did not see: a create (or update) for each row whose latest
/// entry is missing, a delete, or other data, and a delete for each logged row that is
/// gone. As on SQLite, a field the logged row lacks counts only when it is not null (a
/// column added without a default does not log the whole table again), and a logged
/// field the table no longer has does (a column another registration syncs does not).
/// Returns how many entries were written.
pub(crate) async fn reconcile(conn: &mut PgConnection, entity: &Entity) -> Result<u64> {
    backfill(conn, entity).await?;
    let table = quote_ident(&entity.table);
    let ent = quote_literal(&entity.table);
    let key_kind = kind_of(entity, &entity.id);
    let key = key_text("_o", &entity.id, key_kind);
    let scope = match entity.scope_column() {
        Some(c) => key_text("_o", c, kind_of(entity, c)),
        None => "NULL".to_owned(),
    };
    let data = row_json(entity, "_o");
    let table_name = quote_literal(&table);
    let sql = format!(
        "WITH _last AS (
             SELECT DISTINCT ON (entity_id) entity_id, action, data, scope_after
             FROM _rhtmx_sync_log WHERE entity = {ent} ORDER BY entity_id, seq DESC),
         _now AS (
             SELECT {key} AS entity_id, {data} AS data, {scope} AS scope
             FROM (SELECT to_jsonb(_t) AS _o FROM {table} AS _t) AS _rows),
         _gone AS (
             INSERT INTO _rhtmx_sync_log (entity, entity_id, action, scope_before)
             SELECT {ent}, _last.entity_id, 'delete', _last.scope_after FROM _last
             WHERE _last.action <> 'delete'
             AND NOT EXISTS (SELECT 1 FROM _now WHERE _now.entity_id = _last.entity_id)
             RETURNING 1),
         _changed AS (
             INSERT INTO _rhtmx_sync_log (entity, entity_id, action, data, scope_before, scope_after)
             SELECT {ent}, _now.entity_id,
                 CASE WHEN _last.action IS NULL OR _last.action = 'delete' THEN 'create'
                 ELSE 'update' END,
                 _now.data,
                 CASE WHEN _last.action = 'delete' THEN NULL ELSE _last.scope_after END,
                 _now.scope
             FROM _now LEFT JOIN _last ON _last.entity_id = _now.entity_id
             WHERE _last.action IS NULL OR _last.action = 'delete'
                -- An entry that puts the row in another scope than its own would show
                -- it to that scope's readers.
                OR _last.scope_after IS DISTINCT FROM _now.scope
                -- The same text is the same row; an entry that is not a JSON object
                -- (damaged) differs from every row.
                OR CASE WHEN _now.data = _last.data THEN false
                   WHEN jsonb_typeof(_rhtmx_sync_jsonb(_last.data)) IS DISTINCT FROM 'object'
                   THEN true
                   ELSE EXISTS (SELECT 1 FROM jsonb_each(_now.data::jsonb) AS _n
                           LEFT JOIN jsonb_each(_rhtmx_sync_jsonb(_last.data)) AS _w
                           ON _w.key = _n.key
                           WHERE (_w.key IS NULL AND _n.value <> 'null'::jsonb)
                              OR _w.value <> _n.value)
                   OR EXISTS (SELECT 1 FROM jsonb_object_keys(_rhtmx_sync_jsonb(_last.data))
                           AS _w(key)
                           WHERE _w.key NOT IN (SELECT attname FROM pg_attribute
                               WHERE attrelid = to_regclass({table_name}) AND attnum > 0
                               AND NOT attisdropped)) END
             ORDER BY _now.entity_id
             RETURNING 1)
         SELECT (SELECT count(*) FROM _gone) + (SELECT count(*) FROM _changed)"
    );
    let n: i64 = sqlx::query_scalar(&sql).fetch_one(&mut *conn).await?;
    Ok(n as u64)
}

/// The meta key recording which column a table's log entries carry the scope of.
fn scope_key(entity: &Entity) -> String {
    format!("scope:{}", entity.table)
}

/// When a table is first scoped by a column (or by another column than before), its
/// entries do not carry that scope: each is given the scope its row has now (a deleted
/// row's entries, none: they reach nobody), as on SQLite. Clients reset at the change
/// anyway (their cursors carry what they may read), so they pull this history again.
/// Entries written while the table was unscoped carry no scope: a later scope fills
/// them in.
async fn backfill(conn: &mut PgConnection, entity: &Entity) -> Result<()> {
    let Some(column) = entity.scope_column() else {
        sqlx::query("DELETE FROM _rhtmx_sync_meta WHERE key = $1")
            .bind(scope_key(entity))
            .execute(&mut *conn)
            .await?;
        return Ok(());
    };
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = $1")
            .bind(scope_key(entity))
            .fetch_optional(&mut *conn)
            .await?;
    if recorded.as_deref() == Some(column) {
        return Ok(());
    }
    let key = key_text("_o", &entity.id, kind_of(entity, &entity.id));
    let scope = key_text("_o", column, kind_of(entity, column));
    let filled = sqlx::query(&format!(
        "UPDATE _rhtmx_sync_log AS _l SET
             scope_before = CASE WHEN _l.action = 'create' THEN NULL ELSE _x.scope END,
             scope_after = CASE WHEN _l.action = 'delete' THEN NULL ELSE _x.scope END
         FROM (SELECT _e.seq, _s.scope
               FROM _rhtmx_sync_log AS _e
               LEFT JOIN (SELECT DISTINCT ON (k) k, scope
                          FROM (SELECT {key} AS k, {scope} AS scope
                                FROM (SELECT to_jsonb(_t) AS _o FROM {table} AS _t) AS _r)
                               AS _rows
                          WHERE k IS NOT NULL) AS _s ON _s.k = _e.entity_id
               WHERE _e.entity = $1) AS _x
         WHERE _l.seq = _x.seq",
        table = quote_ident(&entity.table),
    ))
    .bind(&entity.table)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query(
        "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(scope_key(entity))
    .bind(column)
    .execute(&mut *conn)
    .await?;
    tracing::info!(entity = %entity.name, column, entries = filled, "the log now carries the scope of each entry");
    Ok(())
}
