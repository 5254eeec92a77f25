//! Change capture: SQLite triggers that append to the change log inside the writer's own
//! transaction, so every insert/update/delete is logged whatever path made it (the app's
//! plain `sqlx::query!`, a migration, another process), and a rolled-back write leaves
//! no entry. A derive cannot wrap arbitrary handler code; a trigger can.

mod install;
mod reconcile;

pub(crate) use self::install::{claim, refresh};
pub use self::install::{drop_triggers, drop_triggers_for, DROP_TRIGGERS_PAUSE};
pub(crate) use self::reconcile::reconcile;

use crate::entity::{quote_ident, quote_literal, Column, ColumnKind, Entity};
use crate::log::{CONTEXT_TABLE, LOG_TABLE};

/// Prefix of every trigger the engine owns.
const PREFIX: &str = "_rhtmx_sync_";

/// The kinds of trigger the engine installs on a table.
const KINDS: [&str; 6] = [
    "insert",
    "update",
    "delete",
    "before_insert",
    "before_update",
    "replaced",
];

/// `_rhtmx_sync_<kind>_<table>`: the kind first, so that no table name can make two
/// tables' trigger names meet (`x` + `before_insert` once met `x_before` + `insert`).
fn trigger_name(kind: &str, table: &str) -> String {
    format!("{PREFIX}{kind}_{table}")
}

/// The table a trigger of the engine was made for, from its name (`None`: not one of
/// the engine's current names, e.g. from an older version).
pub(crate) fn table_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    // Longest kinds first: `before_insert_x` is not `insert` of `before_...`.
    let mut kinds = KINDS;
    kinds.sort_by_key(|k| std::cmp::Reverse(k.len()));
    kinds
        .iter()
        .find_map(|k| rest.strip_prefix(k)?.strip_prefix('_'))
}

/// SQLite's default `SQLITE_MAX_FUNCTION_ARG` is 127: at most 63 pairs per call.
const PAIRS_PER_CALL: usize = 60;

/// `terms` joined by the binary operator `op`; past [`PAIRS_PER_CALL`] terms, in
/// parenthesised groups, so that the expression's depth (SQLite allows 1000) grows with
/// the group size plus the number of groups rather than with the number of terms.
/// Up to that size the text is the plain join, as it has always been.
fn balanced(terms: Vec<String>, op: &str) -> String {
    if terms.len() <= PAIRS_PER_CALL {
        return terms.join(op);
    }
    terms
        .chunks(PAIRS_PER_CALL)
        .map(|group| format!("({})", group.join(op)))
        .collect::<Vec<_>>()
        .join(op)
}

/// The triggers capturing `entity`, as `(name, CREATE statement)`.
pub(crate) fn triggers(entity: &Entity) -> Vec<(String, String)> {
    let table = quote_ident(&entity.table);
    let ent = quote_literal(&entity.table);
    let id = quote_ident(&entity.id);
    let old_key = key_text("OLD", &entity.id);
    let new_key = key_text("NEW", &entity.id);
    let name = |kind: &str| trigger_name(kind, &entity.table);
    let others: Vec<&Column> = entity
        .columns
        .iter()
        .filter(|c| c.name != entity.id)
        .collect();
    let differs = |c: &Column| {
        let q = quote_ident(&c.name);
        format!("OLD.{q} IS NOT NEW.{q}")
    };
    let any_differs = balanced(entity.columns.iter().map(differs).collect(), " OR ");
    // The fields whose value changed, and those the engine's change touched (set to
    // the value they had, they are still this change's), in column order.
    let touched = |c: &Column| {
        format!(
            "{} OR EXISTS (SELECT 1 FROM json_each(_ctx.changed) WHERE value = {})",
            differs(c),
            quote_literal(&c.name)
        )
    };
    let changed = if others.is_empty() {
        "'[]'".to_owned()
    } else if others.len() <= PAIRS_PER_CALL {
        let arms = others
            .iter()
            .map(|c| {
                format!(
                    "SELECT {} AS c WHERE {}",
                    quote_literal(&c.name),
                    touched(c)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        format!("(SELECT json_group_array(c) FROM ({arms}))")
    } else {
        // A compound SELECT holds at most 500 arms: a wide table's list is text.
        let items = others
            .iter()
            .map(|c| {
                let name = serde_json::to_string(&c.name).expect("a string serializes");
                format!(
                    "CASE WHEN {} THEN {} ELSE '' END",
                    touched(c),
                    quote_literal(&format!(",{name}"))
                )
            })
            .collect();
        format!("json('[' || substr({}, 2) || ']')", balanced(items, " || "))
    };
    let new_row = row_json(entity, "NEW");

    // Rows a REPLACE removed are logged before the row that replaced them.
    let replaced = if entity.unique.is_empty() {
        String::new()
    } else {
        log_replaced(entity)
    };
    // Every entry takes the context the engine left for *its* row, if any. A row whose
    // key is NULL (SQLite allows it outside INTEGER PRIMARY KEY) cannot be named by a
    // client: it is not synced, and its write must not fail on the log's NOT NULL.
    let context = |key: &str| {
        format!(
            "FROM (SELECT 1) LEFT JOIN {CONTEXT_TABLE} AS _ctx \
             ON _ctx.entity = {ent} AND _ctx.entity_id = {key}"
        )
    };
    // A scoped entity's entries record the row's scope before and after the change
    // (`crate::scope`); an unscoped one's triggers are exactly as they always were.
    let scope = entity.scope_column();
    let (cols, ctx_cols) = match scope {
        Some(_) => (
            "entity, entity_id, action, data, changed, client_id, hlc, conflict, digest, \
             scope_before, scope_after",
            "_ctx.client_id, _ctx.hlc, _ctx.conflict, _ctx.digest, ",
        ),
        None => (
            "entity, entity_id, action, data, changed, client_id, hlc, conflict, digest",
            "_ctx.client_id, _ctx.hlc, _ctx.conflict, _ctx.digest",
        ),
    };
    // `, <before>, <after>` from the scope column's SQL, for a scoped entity.
    let scopes = |values: &dyn Fn(&str) -> [String; 2]| {
        scope.map_or_else(String::new, |column| values(column).join(", "))
    };
    let null = || "NULL".to_owned();
    let ins = format!(
        "CREATE TRIGGER {n} AFTER INSERT ON {table} BEGIN {replaced}\
         INSERT INTO {LOG_TABLE} ({cols}) \
         SELECT {ent}, {new_key}, 'create', {new_row}, NULL, {ctx_cols}{s} {new_ctx} \
         WHERE NEW.{id} IS NOT NULL; END",
        n = quote_ident(&name("insert")),
        new_ctx = context(&new_key),
        s = scopes(&|c| [null(), key_text("NEW", c)]),
    );
    // A changed key is logged as the old row's delete and the new row's create; an
    // update that changes no synced column is not logged at all.
    let upd = format!(
        "CREATE TRIGGER {n} AFTER UPDATE ON {table} WHEN {any_differs} BEGIN \
         INSERT INTO {LOG_TABLE} ({cols}) \
         SELECT {ent}, {old_key}, 'delete', NULL, NULL, {ctx_cols}{s_gone} {old_ctx} \
         WHERE OLD.{id} IS NOT NEW.{id} AND OLD.{id} IS NOT NULL; \
         INSERT INTO {LOG_TABLE} ({cols}) \
         SELECT {ent}, {new_key}, \
         CASE WHEN OLD.{id} IS NOT NEW.{id} THEN 'create' ELSE 'update' END, {new_row}, \
         CASE WHEN OLD.{id} IS NOT NEW.{id} THEN NULL ELSE {changed} END, \
         {ctx_cols}{s_new} {new_ctx} WHERE NEW.{id} IS NOT NULL; END",
        n = quote_ident(&name("update")),
        old_ctx = context(&old_key),
        new_ctx = context(&new_key),
        s_gone = scopes(&|c| [key_text("OLD", c), null()]),
        // A row under a new key is a new row: it had no scope before.
        s_new = scopes(&|c| [
            format!(
                "CASE WHEN OLD.{id} IS NOT NEW.{id} THEN NULL ELSE {} END",
                key_text("OLD", c)
            ),
            key_text("NEW", c),
        ]),
    );
    let del = format!(
        "CREATE TRIGGER {n} AFTER DELETE ON {table} BEGIN \
         INSERT INTO {LOG_TABLE} ({cols}) \
         SELECT {ent}, {old_key}, 'delete', NULL, NULL, {ctx_cols}{s} {old_ctx} \
         WHERE OLD.{id} IS NOT NULL; END",
        n = quote_ident(&name("delete")),
        old_ctx = context(&old_key),
        s = scopes(&|c| [key_text("OLD", c), null()]),
    );
    let mut all = vec![
        (name("insert"), ins),
        (name("update"), upd),
        (name("delete"), del),
    ];
    if !entity.unique.is_empty() {
        all.extend(replace_triggers(entity));
    }
    all
}

/// The side table where a write's possible REPLACE victims wait for its AFTER trigger.
const REPLACED: &str = "_rhtmx_sync_replaced";

/// A REPLACE that collides on a UNIQUE column deletes the other row *without* firing its
/// delete trigger (unless `PRAGMA recursive_triggers` is on, which the engine cannot set
/// on the app's connections). So a BEFORE trigger notes the rows the new values collide
/// with, and the AFTER trigger logs a delete for each that is gone. An upsert or an
/// `OR IGNORE` leaves its candidates in place, so nothing is logged for them.
fn replace_triggers(entity: &Entity) -> Vec<(String, String)> {
    let table = quote_ident(&entity.table);
    let name = |kind: &str| trigger_name(kind, &entity.table);
    let mut columns: Vec<String> = entity.unique.iter().flatten().cloned().collect();
    columns.push(entity.id.clone());
    columns.sort();
    columns.dedup();
    let columns = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let note_insert = note_candidates(entity, "");
    // The updated row itself is no victim, whatever its key becomes.
    let note_update = note_candidates(
        entity,
        &format!(
            " AND _row.{id} IS NOT OLD.{id}",
            id = quote_ident(&entity.id)
        ),
    );
    vec![
        (
            name("before_insert"),
            format!(
                "CREATE TRIGGER {} BEFORE INSERT ON {table} BEGIN {note_insert} END",
                quote_ident(&name("before_insert"))
            ),
        ),
        (
            name("before_update"),
            format!(
                "CREATE TRIGGER {} BEFORE UPDATE OF {columns} ON {table} BEGIN {note_update} END",
                quote_ident(&name("before_update"))
            ),
        ),
        (
            name("replaced"),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE OF {columns} ON {table} BEGIN {} END",
                quote_ident(&name("replaced")),
                log_replaced(entity)
            ),
        ),
    ]
}

/// Statements that note the rows NEW collides with on any UNIQUE constraint (`and`:
/// a further condition on `_row`).
fn note_candidates(entity: &Entity, and: &str) -> String {
    let table = quote_ident(&entity.table);
    let ent = quote_literal(&entity.table);
    let id = quote_ident(&entity.id);
    let key = key_text("_row", &entity.id);
    // A victim's delete carries the scope it had (unscoped: the notes as they were).
    let (scope, scope_col) = match entity.scope_column() {
        Some(column) => (format!(", {}", key_text("_row", column)), ", scope"),
        None => (String::new(), ""),
    };
    // One SELECT per constraint, so each can use its own index.
    let selects = entity
        .unique
        .iter()
        .map(|cols| {
            let matches = cols
                .iter()
                .map(|c| format!("_row.{q} = NEW.{q}", q = quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" AND ");
            format!(
                "SELECT {ent}, {key}, _row.{id}{scope} FROM {table} AS _row \
                 WHERE {matches} AND _row.{id} IS NOT NEW.{id}{and}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ");
    format!(
        "DELETE FROM {REPLACED} WHERE entity = {ent}; \
         INSERT INTO {REPLACED} (entity, entity_id, key{scope_col}) {selects};"
    )
}

/// Statements that log a delete for each noted row that is gone, unless its delete was
/// logged already (recursive triggers on), then forget the notes.
fn log_replaced(entity: &Entity) -> String {
    let table = quote_ident(&entity.table);
    let ent = quote_literal(&entity.table);
    let id = quote_ident(&entity.id);
    let (cols, scope) = match entity.scope_column() {
        Some(_) => (", scope_before", ", _gone.scope"),
        None => ("", ""),
    };
    format!(
        "INSERT INTO {LOG_TABLE} (entity, entity_id, action, data{cols}) \
         SELECT {ent}, _gone.entity_id, 'delete', NULL{scope} FROM {REPLACED} AS _gone \
         WHERE _gone.entity = {ent} \
         AND NOT EXISTS (SELECT 1 FROM {table} WHERE {id} = _gone.key) \
         AND (SELECT action FROM {LOG_TABLE} WHERE entity = {ent} \
              AND entity_id = _gone.entity_id ORDER BY version DESC LIMIT 1) IS NOT 'delete'; \
         DELETE FROM {REPLACED} WHERE entity = {ent}; "
    )
}

/// A query reading one row (bind both values of [`Key::lookup`](crate::entity::Key)) as the JSON the triggers log for it, so the
/// merge compares values exactly as the log encodes them.
pub(crate) fn row_select(entity: &Entity) -> String {
    format!(
        "SELECT {} FROM {} AS _row WHERE _row.{} IN (?, ?)",
        row_json(entity, "_row"),
        quote_ident(&entity.table),
        quote_ident(&entity.id)
    )
}

/// A key as the log stores it and the wire carries it: its text, except a blob (sqlx
/// stores `uuid::Uuid` as 16 bytes) as [`blob_text`]. `CAST(blob AS TEXT)` would be
/// arbitrary bytes, not UTF-8.
pub(crate) fn key_text(row: &str, id: &str) -> String {
    let v = format!("{row}.{}", quote_ident(id));
    format!(
        "CASE WHEN typeof({v}) = 'blob' THEN {} ELSE CAST({v} AS TEXT) END",
        blob_text(&v)
    )
}

/// The one text form of a blob: a 16-byte blob as a lowercase hyphenated UUID, any
/// other as lowercase hex. [`crate::entity::parse_blob_text`] reads both back.
fn blob_text(v: &str) -> String {
    format!(
        "CASE WHEN length({v}) = 16 THEN lower(substr(hex({v}), 1, 8) || '-' || \
         substr(hex({v}), 9, 4) || '-' || substr(hex({v}), 13, 4) || '-' || \
         substr(hex({v}), 17, 4) || '-' || substr(hex({v}), 21, 12)) ELSE lower(hex({v})) END"
    )
}

/// Integers beyond ±(2^53 − 1) as text: a browser's JSON numbers would round them.
const SAFE_INTEGER: &str = "9007199254740991";

/// The JSON object of a row as clients see it (booleans as `true`/`false`, JSON columns
/// inlined, blobs in their text form so a stray blob can never make the app's write
/// fail, unsafe integers as strings).
///
/// Up to [`PAIRS_PER_CALL`] columns this is one `json_object` call. A wider table would
/// pass more arguments than SQLite allows, so its object is spelled out as text: each
/// key a JSON string literal made here, each value `json_quote`d (which renders a value
/// exactly as `json_object` does and leaves a JSON value as it is), parsed once by
/// `json`. No JSON path is involved, so a column name may hold any character; paths
/// (`'$."name"'`) cannot name a key containing `"`, and misread `.`, `[` or `$`.
pub(crate) fn row_json(entity: &Entity, row: &str) -> String {
    let pairs: Vec<(&str, String)> = entity
        .columns
        .iter()
        .map(|c| (c.name.as_str(), value_json(c, row)))
        .collect();
    if pairs.len() <= PAIRS_PER_CALL {
        let args = pairs
            .iter()
            .map(|(k, v)| format!("{}, {v}", quote_literal(k)))
            .collect::<Vec<_>>()
            .join(", ");
        return format!("json_object({args})");
    }
    let parts = pairs
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let comma = if i == 0 { "" } else { "," };
            let key = serde_json::to_string(k).expect("a string serializes");
            format!(
                "{} || json_quote({v})",
                quote_literal(&format!("{comma}{key}:"))
            )
        })
        .collect();
    let chunks = balanced(parts, " || ");
    format!("json('{{' || {chunks} || '}}')")
}

fn value_json(c: &Column, row: &str) -> String {
    let v = format!("{row}.{}", quote_ident(&c.name));
    match c.kind {
        ColumnKind::Bool => format!(
            "CASE WHEN {v} IS NULL THEN NULL WHEN {v} THEN json('true') ELSE json('false') END"
        ),
        // A blob is not JSON text (and json() raises on one that is not JSONB, which
        // would fail the app's write): it travels in the blob text form.
        ColumnKind::Json => format!(
            "CASE WHEN typeof({v}) = 'blob' THEN {} WHEN json_valid({v}) THEN json({v}) \
             ELSE {v} END",
            blob_text(&v)
        ),
        _ => format!(
            "CASE typeof({v}) WHEN 'blob' THEN {} WHEN 'integer' THEN \
             CASE WHEN {v} > {SAFE_INTEGER} OR {v} < -{SAFE_INTEGER} THEN CAST({v} AS TEXT) \
             ELSE {v} END ELSE {v} END",
            blob_text(&v)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, SqliteConnection};

    async fn eval(conn: &mut SqliteConnection, expr: &str, value: &[u8]) -> String {
        sqlx::query_scalar(&format!("SELECT {expr} FROM (SELECT ? AS \"id\") AS r"))
            .bind(value)
            .fetch_one(&mut *conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_blob_key_has_one_text_form() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let uuid: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            eval(&mut conn, &key_text("r", "id"), &uuid).await,
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        assert_eq!(
            eval(&mut conn, &key_text("r", "id"), &[0xab, 0x01]).await,
            "ab01"
        );
        // The engine reads both back to the same bytes.
        for bytes in [uuid.clone(), vec![0xab, 0x01]] {
            let text = crate::entity::blob_text(&bytes);
            assert_eq!(crate::entity::parse_blob_text(&text), Some(bytes.clone()));
            assert_eq!(
                crate::entity::parse_blob_text(&text.to_uppercase()),
                Some(bytes)
            );
        }
        // Text keys are their text.
        let text: String = sqlx::query_scalar(&format!(
            "SELECT {} FROM (SELECT 'row-1' AS \"id\") AS r",
            key_text("r", "id")
        ))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(text, "row-1");
    }

    #[tokio::test]
    async fn integers_a_browser_would_round_are_logged_as_strings() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let column = Column {
            name: "n".into(),
            kind: ColumnKind::Integer,
            not_null: false,
            has_default: false,
            generated: false,
            bytes: false,
            sql_type: String::new(),
        };
        for (n, json) in [
            (9_007_199_254_740_991_i64, "9007199254740991"),
            (9_007_199_254_740_992, "\"9007199254740992\""),
            (-9_007_199_254_740_992, "\"-9007199254740992\""),
            (i64::MAX, "\"9223372036854775807\""),
        ] {
            let got: String = sqlx::query_scalar(&format!(
                "SELECT json_array({}) FROM (SELECT ? AS \"n\") AS r",
                value_json(&column, "r")
            ))
            .bind(n)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert_eq!(got, format!("[{json}]"), "{n}");
        }
    }
}
