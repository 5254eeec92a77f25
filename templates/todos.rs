//! maud templates of the todo_sync example: the layout (with the sync script tag), the
//! list, one item, and the new-todo form. Plain htmx attributes; the only sync-specific
//! markup is the script tag, `rhtmx:todos:changed` in a trigger, and the
//! `data-rhtmx-*` hooks for the pending count and client-generated ids.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What a path segment may hold as it is: RFC 3986's unreserved characters. Everything
/// else, `/`, `?`, `#` and `%` included, is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The URL of a todo, `/todos/{id}{rest}`, with the id as one percent-encoded path
/// segment. maud escapes HTML, not URLs: `hx-put="/todos/(id)"` with the id
/// `../todos/<other>#` would rename the other todo.
///
/// `None` for the ids no URL can name: empty, `.` and `..` (browsers read `%2E%2E` as
/// `..` too). The app never creates them (its ids are UUIDs); another writer might.
pub fn todo_url(id: &str, rest: &str) -> Option<String> {
    if matches!(id, "" | "." | "..") {
        return None;
    }
    Some(format!("/todos/{}{rest}", utf8_percent_encode(id, SEGMENT)))
}

/// A row as the templates need it.
pub struct TodoView<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub completed: bool,
}

/// The whole page.
pub fn page(todos: &[TodoView<'_>], version: i64) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="htmx-config" content=(super::htmx::CONFIG);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Todos · rhtmx-sync" }
                style { (PreEscaped(STYLE)) }
                @for src in super::htmx::scripts() { script src=(src) {} }
                script src="/assets/app.js" {}
                script src="/api/sync/client.js" data-sync-entities="todos" data-service-worker {}
            }
            body {
                header {
                    h1 { "Todos" }
                    p .status {
                        span .online { "online" }
                        span .offline { "offline" }
                        span .pending data-rhtmx-pending-count="0" { " changes waiting to sync" }
                    }
                    // Filled by the client: a bar and a line of text while the first
                    // sync runs (hidden otherwise, by the style below).
                    div .sync-progress data-rhtmx-progress {}
                }
                // Kept offline, the form is cleared by the client and the write listed below
                // in the words of `data-rhtmx-label`; online, app.js clears it once it
                // succeeded.
                form #new-todo hx-post="/todos" hx-target="#todo-list" hx-swap="outerHTML"
                    data-rhtmx-new-id="id" data-rhtmx-label="Add “{title}”" {
                    input name="title" placeholder="What needs doing?" required autocomplete="off";
                    button type="submit" { "Add" }
                }
                div hx-get="/todos" hx-trigger="rhtmx:todos:changed from:body" hx-swap="innerHTML" {
                    (list(todos, version))
                }
                (panels())
            }
        }
    }
}

/// What waits to sync, what the server refused and what conflicted: filled in by the
/// page's `app.js` (and the pending list by the client itself).
pub fn panels() -> Markup {
    html! {
        section #pending-panel .panel hidden {
            h2 { "Waiting to sync" }
            ul #pending-list data-rhtmx-pending-list {}
        }
        section #rejected-panel .panel .warn hidden {
            h2 { "Not accepted by the server" }
            ul #rejected-list {}
        }
        section #conflict-panel .panel hidden {
            h2 { "Edited in two places" }
            ul #conflict-list {}
        }
    }
}

/// The list fragment (also the answer to every write). `version` is the change-log
/// head read before the rows: an edit made on this list is merged against it.
pub fn list(todos: &[TodoView<'_>], version: i64) -> Markup {
    html! {
        ul #todo-list data-rhtmx-version=(version) {
            @for todo in todos {
                (item(todo))
            }
        }
    }
}

/// One todo with its toggle, rename and delete controls (none for an id no URL can
/// name, see [`todo_url`]).
pub fn item(todo: &TodoView<'_>) -> Markup {
    let toggle_to = if todo.completed { "false" } else { "true" };
    let (Some(url), Some(toggle_url)) = (todo_url(todo.id, ""), todo_url(todo.id, "/toggle"))
    else {
        return html! {
            li .todo .done[todo.completed] data-id=(todo.id) { span { (todo.title) } }
        };
    };
    html! {
        li .todo .done[todo.completed] data-id=(todo.id) {
            button .toggle hx-post=(toggle_url)
                hx-vals={ "{\"completed\": \"" (toggle_to) "\"}" }
                data-rhtmx-label=(if todo.completed { "Mark not done" } else { "Mark done" })
                hx-target="#todo-list" hx-swap="outerHTML"
                aria-label="toggle" { @if todo.completed { "✓" } @else { "○" } }
            form .rename hx-put=(url) hx-target="#todo-list" hx-swap="outerHTML"
                data-rhtmx-label="Rename to “{title}”" {
                input name="title" value=(todo.title) aria-label="title";
            }
            button .delete hx-delete=(url) hx-target="#todo-list"
                hx-swap="outerHTML" aria-label="delete"
                data-rhtmx-label={ "Delete “" (todo.title) "”" } { "×" }
        }
    }
}

pub const STYLE: &str = r#"
:root { font-family: system-ui, sans-serif; color: #1d232a; background: #f6f7f9; }
body { max-width: 36rem; margin: 2rem auto; padding: 0 1rem; }
h1 { margin: 0; font-size: 1.6rem; }
header { display: flex; align-items: baseline; justify-content: space-between; gap: 1rem; }
.status { margin: 0; font-size: .9rem; color: #5b6570; }
.status .offline, .status .pending { display: none; }
html.rhtmx-offline .status .online { display: none; }
html.rhtmx-offline .status .offline { display: inline; color: #b3541e; font-weight: 600; }
html.rhtmx-pending .status .pending { display: inline; margin-left: .5em; }
html.rhtmx-pending .status .pending::before { content: attr(data-rhtmx-pending-count); font-weight: 600; }
.sync-progress { font-size: .85rem; color: #5b6570; }
.sync-progress:not([data-phase=syncing]) { display: none; }
.sync-progress progress { width: 8rem; margin-right: .5em; vertical-align: middle; }
form#new-todo { display: flex; gap: .5rem; margin: 1rem 0; }
input { font: inherit; padding: .45rem .6rem; border: 1px solid #cdd3da; border-radius: .4rem; flex: 1; min-width: 0; }
button { font: inherit; padding: .4rem .8rem; border: 1px solid #cdd3da; border-radius: .4rem; background: white; cursor: pointer; }
ul { list-style: none; padding: 0; margin: 0; }
li.todo { display: flex; gap: .5rem; align-items: center; padding: .4rem; background: white; border: 1px solid #e3e7eb; border-radius: .5rem; margin-bottom: .4rem; }
li.todo form { flex: 1; display: flex; }
li.todo input { border-color: transparent; }
li.done input { text-decoration: line-through; color: #8a949e; }
li.todo button.toggle { width: 2.2rem; }
.panel { margin-top: 1.2rem; padding: .6rem .8rem; border-radius: .5rem; background: #fff8e6; border: 1px solid #f0d9a0; }
.panel.warn { background: #fdecec; border-color: #f1b5b5; }
.panel h2 { font-size: .95rem; margin: 0 0 .4rem; }
.panel ul li { display: flex; gap: .5rem; align-items: center; padding: .15rem 0; font-size: .9rem; }
.panel ul li span { flex: 1; }
.panel button { padding: .15rem .5rem; font-size: .85rem; }
html.rhtmx-stale body::before { content: "Offline copy — showing what was last loaded"; display: block; margin-bottom: 1rem; padding: .4rem .6rem; border-radius: .4rem; background: #eef1f4; font-size: .85rem; color: #5b6570; }
@media (max-width: 30rem) { body { margin: 1rem auto; } header { flex-direction: column; gap: .2rem; } }
"#;
