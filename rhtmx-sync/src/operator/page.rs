//! The operator view as HTML: one server-rendered page, no script, every figure of
//! [`OperatorFigures`] in an element marked `data-figure="..."` so that tests and
//! scrapers find the numbers without reading the layout.

use maud::{html, Markup, DOCTYPE};
use serde::Serialize;

use super::figures::{ConflictFigure, ErrorFigure, OperatorFigures, StreamFigure};

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1.5rem; }
dt { color: #555; } dd { margin: 0; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; } td, th { padding: .2rem .8rem; text-align: left; }
tr:nth-child(even) td { background: #f4f4f4; } .muted { color: #777; }
";

/// The whole page; `json_href` is where the same figures are as JSON.
pub(super) fn render(figures: &OperatorFigures, json_href: &str) -> Markup {
    let log = &figures.log;
    let idempotency = &figures.idempotency;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="robots" content="noindex";
                title { "Sync engine: operator view" }
                style { (STYLE) }
            }
            body {
                h1 { "Sync engine" }
                p.muted {
                    "Read at " (utc(figures.read_at_ms)) ". Reload for new figures; "
                    a href=(json_href) { "the same as JSON" } "."
                }
                h2 { "Change log" }
                dl {
                    dt { "Rows" } dd data-figure="log.rows" { (log.rows) }
                    dt { "Size of its values" }
                    dd { span data-figure="log.bytes" { (log.bytes) } " bytes (" (size(log.bytes)) ")" }
                    dt { "Oldest version" }
                    dd data-figure="log.oldest_version" {
                        @match log.oldest_version { Some(v) => (v), None => "none (empty)" }
                    }
                    dt { "Head version" } dd data-figure="log.head_version" { (log.head_version) }
                    dt { "Compaction horizon" } dd data-figure="log.horizon" { (log.horizon) }
                    dt { "Last compaction" }
                    dd data-figure="last_compaction" {
                        @match &figures.last_compaction {
                            Some(c) => {
                                (c.removed) " entries removed from " (c.rows) " rows ("
                                (c.tombstones) " expired tombstones), longest lock "
                                (c.longest_transaction_us) " µs, finished at " (c.finished_at_ms)
                            }
                            None => "none yet on this instance",
                        }
                    }
                    dt { "Changes in the last minute" }
                    dd data-figure="log.changes_last_minute" { (log.changes_last_minute) }
                    dt { "Changes in the last hour" }
                    dd data-figure="log.changes_last_hour" { (log.changes_last_hour) }
                    dt { "Entries carrying a conflict" } dd data-figure="log.conflicts" { (log.conflicts) }
                    dt { "Database file" }
                    dd { span data-figure="log.database_bytes" { (log.database_bytes) } " bytes (" (size(log.database_bytes)) ")" }
                }
                h2 {
                    "Event streams: "
                    span data-figure="streams.open" { (figures.streams.open) }
                    " open of at most "
                    span data-figure="streams.limit" { (figures.streams.limit) }
                }
                (streams(&figures.streams.list))
                h2 { "Idempotency store" }
                dl {
                    dt { "Keys" } dd data-figure="idempotency.keys" { (idempotency.keys) }
                    dt { "Of those in flight" } dd data-figure="idempotency.in_flight" { (idempotency.in_flight) }
                    dt { "Size of their data" }
                    dd { span data-figure="idempotency.bytes" { (idempotency.bytes) } " bytes (" (size(idempotency.bytes)) ")" }
                }
                h2 { "Recent conflicts" }
                (conflicts(&figures.recent_conflicts))
                h2 {
                    "Recent errors: "
                    span data-figure="errors.total" { (figures.errors.total) }
                    " since start"
                }
                (errors(&figures.errors.recent))
            }
        }
    }
}

fn streams(list: &[StreamFigure]) -> Markup {
    html! {
        @if list.is_empty() {
            p.muted { "No stream is open." }
        } @else {
            table {
                tr { th { "#" } th { "User" } th { "Tenant" } th { "Connected since" } th { "Cursor" } th { "Behind" } }
                @for s in list {
                    tr data-stream=(s.id) {
                        td { (s.id) }
                        td data-figure="stream.user" { (s.user.as_deref().unwrap_or("anonymous")) }
                        td { (s.tenant.as_deref().unwrap_or("")) }
                        td { (utc(s.connected_at_ms)) span.muted { " (" (s.connected_secs) " s)" } }
                        td data-figure="stream.cursor" { (s.cursor) }
                        td data-figure="stream.behind" { (s.behind) }
                    }
                }
            }
        }
    }
}

fn conflicts(list: &[ConflictFigure]) -> Markup {
    html! {
        @if list.is_empty() {
            p.muted { "The log carries no conflict." }
        } @else {
            table {
                tr {
                    th { "Version" } th { "At" } th { "Entity" } th { "Row" } th { "Reason" }
                    th { "Outcome" } th { "Rule" } th { "Fields" } th { "Client" }
                }
                @for c in list {
                    tr data-conflict=(c.version) {
                        td data-figure="conflict.version" { (c.version) }
                        td { (utc(c.at_ms)) }
                        td { (c.conflict.entity) }
                        td {
                            @match c.conflict.id.as_str() { Some(id) => (id), None => (c.conflict.id) }
                        }
                        td { (name(&c.conflict.reason)) }
                        td { (name(&c.conflict.outcome)) }
                        td { (name(&c.conflict.strategy)) }
                        td { (c.conflict.fields.keys().map(String::as_str).collect::<Vec<_>>().join(", ")) }
                        td { (c.conflict.client_id.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

fn errors(list: &[ErrorFigure]) -> Markup {
    html! {
        @if list.is_empty() {
            p.muted { "No error since start." }
        } @else {
            table {
                tr { th { "At" } th { "Status" } th { "Request" } th { "Message" } }
                @for e in list {
                    tr {
                        td { (utc(e.at_ms)) }
                        td data-figure="error.status" { (e.status) }
                        td { (e.method) " " (e.path) }
                        td { (e.message) }
                    }
                }
            }
        }
    }
}

/// An enum's wire name (`"last_write_wins"`), as the JSON has it.
fn name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// Bytes for a human: `1.5 MiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC` (no date crate for one line).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil(i64::try_from(secs / 86_400).unwrap_or(0));
    let time = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_as_people_write_them() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2024-11-23T06:10:00.123Z, as the log's own test has it.
        assert_eq!(utc(1_732_342_200_123), "2024-11-23 06:10:00 UTC");
        // A leap day and the last second of a year.
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_704_067_199_000), "2023-12-31 23:59:59 UTC");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
    }
}
