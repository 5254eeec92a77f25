//! Causal stamping: every entry a database writes itself — the app's own SQL, a push, a
//! [`SyncEngine::write`](crate::SyncEngine::write) — is ordered after every change its row
//! has seen, whatever the clocks say.
//!
//! Field-level merging converges only if each database's table holds, for every field,
//! the write with the greatest HLC it has seen. A local write is the newest value here,
//! so its HLC must exceed every HLC the row has: otherwise another database, which
//! compares HLCs, keeps the value this one overwrote, and the two differ for good. The
//! clocks alone do not ensure it: the app's SQL is stamped from the database's wall
//! clock and never sees received HLCs, another engine's clock may run ahead by more
//! than the tolerance a browser gets, and a replayed form carries the HLC of the moment
//! it was filled in.
//!
//! So the log stamps its own entries, in the transaction that writes them: a local entry
//! whose effective HLC ([`crate::log`]) is below the greatest HLC of the writes it
//! overwrites (earlier writes of the fields it sets; for a create or a delete, every
//! earlier entry of the row) is moved to one millisecond after that, on its own node,
//! with the counter at its greatest (99999: a clock gets there only after 100,000
//! events in one millisecond, so the moved HLC is never one its writer's clock also
//! makes; and the physical part moves because an SQL write's counter is rewritten for
//! other authors, see [`crate::replication`]), and the HLC it was given
//! is kept in `origin_hlc`: a client's later change is compared with its own earlier
//! ones by its own clock. An HLC equal to the row's greatest is the same writer at the
//! same instant (two writes of one handler, one push's batch): those keep their order
//! by version, as they always did — except the app's own SQL writes (node 0), whose
//! HLC is only the millisecond they were written: a second one in that millisecond
//! moves one counter tick on, so that every engine orders them as this one did
//! ([`crate::replication`] exports them with this engine's node). An entry applied from another author
//! keeps its HLC — it is that author's — and so does one that only carries a conflict
//! report (it sets nothing); when it is below the row's greatest, it records the
//! greatest in `row_hlc`. So one index probe per write finds the row's greatest HLC, and
//! only when that is above the new entry's — a rare case of skewed clocks or concurrent
//! edits — are the row's entries read to find what the fields it sets had. Field by
//! field rather than by row, so that a write of one field is not moved after a
//! concurrent write of another, which would make it beat later writes of its own field
//! by the last-writer-wins rule. Every writer of the log goes through this, with no
//! code of its own: a trigger on SQLite, a `BEFORE INSERT` trigger on PostgreSQL.
//! Compaction keeps each row's latest entry, so it keeps the row's greatest HLC too; the
//! HLCs of the writes it folds away stay in the survivor's field clocks, which the
//! stamping reads with the entries.

/// The node of the app's own SQL writes (see [`crate::log`]).
const NODE_0: &str = "0000000000000000";

/// The column recording the greatest HLC of a row's entries up to and including this
/// one, where that is not the entry's own effective HLC (otherwise `NULL`).
pub(crate) const ROW_HLC: &str = "row_hlc";

/// The clause matching the entries of `NEW` that keep their HLC: those applied from
/// another engine (their `client_id`), and those that only carry a conflict report
/// (an update that set nothing): they order no write. Never `NULL` (a `NOT` of it
/// must be true for every other entry).
fn keeps() -> String {
    format!(
        "(substr(COALESCE(NEW.client_id, ''), 1, {}) = '{}' \
         OR (NEW.action = 'update' AND COALESCE(NEW.changed, '') = '[]'))",
        crate::replication::AUTHOR_PREFIX.len(),
        crate::replication::AUTHOR_PREFIX
    )
}

/// The trigger stamping each new entry of the SQLite log (see the module docs).
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_trigger() -> String {
    use crate::log::LOG_TABLE;
    let effective = sqlite_effective;
    // The row's greatest HLC before NEW: its latest entry's. The log's row index
    // (entity, entity_id, version) finds it.
    let before = format!(
        "(SELECT COALESCE(_p.{ROW_HLC}, {}) FROM {LOG_TABLE} AS _p \
         WHERE _p.entity = NEW.entity AND _p.entity_id = NEW.entity_id \
         AND _p.version < NEW.version ORDER BY _p.version DESC LIMIT 1)",
        effective("_p")
    );
    // Only when that is above NEW: the greatest HLC of the writes NEW overwrites — the
    // entries that set a field NEW sets, and the field clocks compaction folded into a
    // survivor (`crate::compaction`). Text: `''` where there is none (below every HLC).
    let fields = "CASE WHEN json_valid(NEW.changed) THEN NEW.changed ELSE '[]' END";
    let entries = format!(
        "(SELECT max({}) FROM {LOG_TABLE} AS _p \
         WHERE _p.entity = NEW.entity AND _p.entity_id = NEW.entity_id \
         AND _p.version < NEW.version AND (NEW.action <> 'update' OR _p.action <> 'update' \
         OR _p.changed IS NULL OR NOT COALESCE(json_valid(_p.changed), 0) \
         OR NOT COALESCE(json_valid(NEW.changed), 0) \
         OR EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(_p.changed) \
         THEN _p.changed ELSE '[]' END) AS _a, json_each({fields}) AS _b \
         WHERE _a.value = _b.value)))",
        effective("_p")
    );
    // A damaged value never fails the app's write: JSON functions only see valid JSON.
    let clock = "CASE WHEN _c.type = 'array' THEN json_extract(_c.value, '$[1]') END";
    let folded = format!(
        "(SELECT max({clock}) FROM {LOG_TABLE} AS _p, \
         json_each(CASE WHEN json_valid(_p.clocks) THEN _p.clocks ELSE '{{}}' END) AS _c \
         WHERE _p.entity = NEW.entity AND _p.entity_id = NEW.entity_id \
         AND _p.version < NEW.version AND _p.clocks IS NOT NULL \
         AND (NEW.action <> 'update' OR NOT COALESCE(json_valid(NEW.changed), 0) \
         OR _c.key IN (SELECT value FROM json_each({fields}))))"
    );
    let overwritten = format!("max(COALESCE({entries}, ''), COALESCE({folded}, ''))");
    let own = effective("NEW");
    let keeps = keeps();
    let this = effective(LOG_TABLE);
    // An SQL write (node 0) in the millisecond of the row's greatest HLC, or of the
    // greatest it overwrites: one counter tick after it (or the next millisecond;
    // 99999 is the moved entries'), on node 0.
    let node0 = format!("substr({own}, 23) = '{NODE_0}'");
    let same_ms = |x: &str| format!("substr({x}, 1, 15) = substr({own}, 1, 15)");
    let tick = |x: &str| {
        format!(
            "CASE WHEN CAST(substr({x}, 17, 5) AS INTEGER) < 99998 \
             THEN substr({x}, 1, 16) || printf('%05d', CAST(substr({x}, 17, 5) AS INTEGER) + 1) \
             || substr({own}, 22) ELSE printf('%015d-00000-%s', \
             CAST(substr({x}, 1, 15) AS INTEGER) + 1, substr({own}, 23)) END"
        )
    };
    let (tick_before, tick_over) = (tick("_r.hlc"), tick("_o.hlc"));
    let (in_before_ms, in_over_ms) = (same_ms("_r.hlc"), same_ms("_o.hlc"));
    let before_ms = same_ms(&before);
    // `UPDATE … FROM` evaluates each subquery once; the `CASE` reads the row's entries
    // only where the first statement did not stamp NEW already.
    format!(
        "CREATE TRIGGER IF NOT EXISTS _rhtmx_sync_log_causal AFTER INSERT ON {LOG_TABLE} \
         WHEN {before} >= {own} BEGIN \
         UPDATE {LOG_TABLE} SET origin_hlc = {own}, hlc = {tick_before} \
         FROM (SELECT {before} AS hlc) AS _r \
         WHERE version = NEW.version AND NOT {keeps} AND {node0} AND {in_before_ms}; \
         UPDATE {LOG_TABLE} SET origin_hlc = {own}, hlc = _s.moved \
         FROM (SELECT _o.hlc, CASE WHEN {node0} AND {in_over_ms} THEN {tick_over} \
         ELSE printf('%015d-99999-%s', CAST(substr(_o.hlc, 1, 15) AS INTEGER) + 1, \
         substr({own}, 23)) END AS moved FROM (SELECT CASE WHEN NOT {keeps} \
         AND NOT ({node0} AND {before_ms}) THEN {overwritten} END AS hlc) AS _o) AS _s \
         WHERE version = NEW.version AND (_s.hlc > {own} OR ({node0} AND _s.hlc = {own})) \
         AND _s.moved > {own} AND length(_s.moved) = length({own}); \
         UPDATE {LOG_TABLE} SET {ROW_HLC} = _r.hlc FROM (SELECT {before} AS hlc) AS _r \
         WHERE version = NEW.version AND {this} < _r.hlc; END"
    )
}

/// The trigger function stamping each new entry of the PostgreSQL log in `schema`, and
/// its trigger (see the module docs). It runs inside the capture functions, whose
/// `search_path` is only `pg_catalog`: names are qualified. Text compares in the "C"
/// collation: HLCs are fixed-width ASCII whose byte order is clock order.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_ddl(schema: &str) -> String {
    let schema = crate::entity::quote_ident(schema);
    let effective = postgres_effective;
    let (before, own) = (effective("_p"), effective("NEW"));
    let keeps = keeps();
    let json = format!("{schema}._rhtmx_sync_jsonb");
    // One counter tick after `x` on NEW's node (or the next millisecond; 99999 is the
    // moved entries').
    let tick = |x: &str| {
        format!(
            "CASE WHEN substr({x}, 17, 5)::int < 99998 THEN substr({x}, 1, 16) \
             || lpad((substr({x}, 17, 5)::int + 1)::text, 5, '0') || substr(_own, 22) \
             ELSE lpad((left({x}, 15)::bigint + 1)::text, 15, '0') || '-00000-' \
             || substr(_own, 23) END"
        )
    };
    let (tick_before, tick_over) = (tick("_before"), tick("_overwritten"));
    format!(
        "CREATE OR REPLACE FUNCTION {schema}._rhtmx_sync_log_causal() RETURNS trigger \
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    _before text;
    _overwritten text;
    _moved text;
    _own text;
BEGIN
    -- Writes to one row hold its lock until they commit, so its latest entry by seq
    -- is the one committed last.
    SELECT COALESCE(_p.{ROW_HLC}, {before}) INTO _before FROM {schema}._rhtmx_sync_log AS _p
        WHERE _p.entity = NEW.entity AND _p.entity_id = NEW.entity_id
        ORDER BY _p.seq DESC LIMIT 1;
    _own := {own};
    IF _before IS NULL OR _own COLLATE \"C\" > _before COLLATE \"C\" THEN
        RETURN NEW;
    END IF;
    IF NOT {keeps} THEN
        BEGIN
            IF substr(_own, 23) = '{NODE_0}' AND left(_before, 15) = left(_own, 15) THEN
                -- An SQL write in the millisecond of the row's greatest HLC: one
                -- counter tick after it, without reading the row's entries.
                _moved := {tick_before};
            ELSE
                -- The greatest HLC of the writes NEW overwrites: the entries that set a
                -- field it sets, and the field clocks compaction folded into a survivor.
                SELECT max(_h COLLATE \"C\") INTO _overwritten FROM (
                    SELECT {before} AS _h FROM {schema}._rhtmx_sync_log AS _p
                        WHERE _p.entity = NEW.entity AND _p.entity_id = NEW.entity_id
                        AND (NEW.action <> 'update' OR _p.action <> 'update'
                             OR _p.changed IS NULL
                             OR COALESCE({json}(_p.changed) ?| ARRAY(
                                 SELECT jsonb_array_elements_text({json}(NEW.changed))), true))
                    UNION ALL
                    SELECT _c.value ->> 1 FROM {schema}._rhtmx_sync_log AS _p,
                        jsonb_each(CASE WHEN jsonb_typeof({json}(_p.clocks)) = 'object'
                            THEN {json}(_p.clocks) ELSE '{{}}' END) AS _c
                        WHERE _p.entity = NEW.entity AND _p.entity_id = NEW.entity_id
                        AND _p.clocks IS NOT NULL
                        AND (NEW.action <> 'update' OR _c.key = ANY(ARRAY(
                            SELECT jsonb_array_elements_text({json}(NEW.changed)))))
                ) AS _all;
                IF substr(_own, 23) = '{NODE_0}' AND _overwritten COLLATE \"C\" >= _own COLLATE \"C\"
                    AND left(_overwritten, 15) = left(_own, 15) THEN
                    _moved := {tick_over};
                ELSIF _overwritten COLLATE \"C\" > _own COLLATE \"C\" THEN
                    _moved := lpad((left(_overwritten, 15)::bigint + 1)::text, 15, '0')
                        || '-99999-' || substr(_own, 23);
                END IF;
            END IF;
            -- Never earlier than given, nor past the last millisecond an HLC holds (a
            -- damaged HLC in the log).
            IF _moved COLLATE \"C\" > _own COLLATE \"C\" AND length(_moved) = length(_own) THEN
                NEW.origin_hlc := _own;
                NEW.hlc := _moved;
                _own := _moved;
            END IF;
        EXCEPTION WHEN others THEN
            -- A damaged log entry must not fail the app's write: it keeps its HLC.
            NULL;
        END;
    END IF;
    IF _own COLLATE \"C\" < _before COLLATE \"C\" THEN
        NEW.{ROW_HLC} := _before;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS _rhtmx_sync_log_causal ON {schema}._rhtmx_sync_log;
CREATE TRIGGER _rhtmx_sync_log_causal BEFORE INSERT ON {schema}._rhtmx_sync_log
    FOR EACH ROW EXECUTE FUNCTION {schema}._rhtmx_sync_log_causal();
"
    )
}

/// The effective HLC (`crate::log`) of the SQLite log entry `a`.
#[cfg(feature = "sqlite")]
fn sqlite_effective(a: &str) -> String {
    format!(
        "COALESCE({a}.hlc, printf('%015d-00000-0000000000000000', \
         CAST(strftime('%s', {a}.created_at) AS INTEGER) * 1000 \
         + CAST(substr({a}.created_at, 21, 3) AS INTEGER)))"
    )
}

/// The effective HLC (`crate::log`) of the PostgreSQL log entry `a`.
#[cfg(feature = "postgres")]
fn postgres_effective(a: &str) -> String {
    format!(
        "COALESCE({a}.hlc, lpad(floor(extract(epoch FROM {a}.created_at) * 1000)\
         ::bigint::text, 15, '0') || '-00000-0000000000000000')"
    )
}

/// Sets `row_hlc` on each row's latest entry of a SQLite log written before causal
/// stamping (or before it read field clocks): its first write after the upgrade is
/// then ordered after every HLC the row has, as later ones are. One pass over the log.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_backfill() -> String {
    use crate::log::LOG_TABLE;
    let (entry, target) = (sqlite_effective("_e"), sqlite_effective(LOG_TABLE));
    format!(
        "UPDATE {LOG_TABLE} SET {ROW_HLC} = _m.greatest FROM (\
         SELECT entity, entity_id, max(version) AS top, max(h) AS greatest FROM (\
         SELECT _e.entity, _e.entity_id, _e.version, {entry} AS h FROM {LOG_TABLE} AS _e \
         UNION ALL SELECT _e.entity, _e.entity_id, _e.version, \
         CASE WHEN _c.type = 'array' THEN json_extract(_c.value, '$[1]') END \
         FROM {LOG_TABLE} AS _e, json_each(CASE WHEN json_valid(_e.clocks) THEN _e.clocks \
         ELSE '{{}}' END) AS _c WHERE _e.clocks IS NOT NULL) GROUP BY entity, entity_id) AS _m \
         WHERE {LOG_TABLE}.version = _m.top AND _m.greatest > {target}"
    )
}

/// [`sqlite_backfill`] for the PostgreSQL log in `schema`.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_backfill(schema: &str) -> String {
    let schema = crate::entity::quote_ident(schema);
    let (entry, target) = (postgres_effective("_e"), postgres_effective("_l"));
    let json = format!("{schema}._rhtmx_sync_jsonb");
    format!(
        "UPDATE {schema}._rhtmx_sync_log AS _l SET {ROW_HLC} = _m.greatest FROM (\
         SELECT entity, entity_id, max(seq) AS top, max(h COLLATE \"C\") AS greatest FROM (\
         SELECT _e.entity, _e.entity_id, _e.seq, {entry} AS h \
         FROM {schema}._rhtmx_sync_log AS _e \
         UNION ALL SELECT _e.entity, _e.entity_id, _e.seq, _c.value ->> 1 \
         FROM {schema}._rhtmx_sync_log AS _e, jsonb_each(CASE WHEN \
         jsonb_typeof({json}(_e.clocks)) = 'object' THEN {json}(_e.clocks) ELSE '{{}}' END) AS _c \
         WHERE _e.clocks IS NOT NULL) AS _x GROUP BY entity, entity_id) AS _m \
         WHERE _l.seq = _m.top AND _m.greatest COLLATE \"C\" > {target} COLLATE \"C\""
    )
}

/// A fingerprint of the stamping trigger's text (FNV-1a, 64 bits, hex): kept in
/// `_rhtmx_sync_meta` under `stamping`, so that an engine replaces a trigger an older
/// build installed, whatever the schema version says.
pub(crate) fn fingerprint(ddl: &str) -> String {
    let hash = ddl.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}
