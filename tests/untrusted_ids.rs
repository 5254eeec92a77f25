//! Ids come from clients (the browser names offline creates), so the example must not
//! let one id reach another row: `POST /todos` takes only UUIDs, and every URL the
//! templates build from an id addresses that id's row and no other, whatever it holds.

mod common;

use common::*;

/// Every table of the database (the engine's own included) with its rows as text, to
/// show a refused request wrote nothing.
async fn snapshot(server: &Server) -> String {
    every_row(&server.db, &server.engine).await
}

const OTHER: &str = "0192f0a0-0000-7000-8000-000000000001";

async fn create_refuses_an_id_that_is_not_a_uuid_and_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    add_todo(&server, OTHER, "someone else's").await;
    let before = snapshot(&server).await;

    let refused = [
        format!("../todos/{OTHER}#"),
        format!("{OTHER}/toggle"),
        format!("{OTHER}#"),
        format!("{OTHER}?x=1"),
        format!("{OTHER} "),
        format!(" {OTHER}"),
        format!("{{{OTHER}}}"),
        format!("urn:uuid:{OTHER}"),
        OTHER.replace('-', ""),
        OTHER.replace('-', "/"),
        "..".into(),
        ".".into(),
        "%2e%2e".into(),
        "a1".into(),
        "0192f0a0-0000-7000-8000-00000000000g".into(),
        "x".repeat(65),
    ];
    for id in &refused {
        let res = client()
            .post(format!("{}/todos", server.base))
            .form(&[("id", id.as_str()), ("title", "hijack")])
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert_eq!(status, 422, "id {id:?}: {body}");
        assert!(body.contains("UUID"), "id {id:?}: unclear message {body:?}");
    }
    assert_eq!(
        snapshot(&server).await,
        before,
        "a refused create changed the database"
    );
    assert_eq!(
        todos(&server.db).await,
        [(OTHER.into(), "someone else's".into(), false)]
    );
}
both!(create_refuses_an_id_that_is_not_a_uuid_and_writes_nothing);

async fn create_keeps_a_uuid_in_lowercase_and_still_makes_one_without_an_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    add_todo(&server, &OTHER.to_uppercase(), "shouted").await;
    add_todo(&server, "", "named by the server").await;
    let rows = todos(&server.db).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, OTHER, "stored in lowercase");
    assert!(uuid::Uuid::try_parse(&rows[1].0).is_ok(), "{rows:?}");
    // The same create again (a replay) does not duplicate.
    add_todo(&server, OTHER, "again").await;
    assert_eq!(todos(&server.db).await, rows);
}
both!(create_keeps_a_uuid_in_lowercase_and_still_makes_one_without_an_id);

/// The `(method, url)` of every control the list renders for the row `id`, as a browser
/// resolves them against the page, and the element's `data-id`.
async fn controls(base: &str, id: &str) -> (String, Vec<(reqwest::Method, reqwest::Url)>) {
    let (data_id, found) = rendered(base, id).await;
    assert_eq!(found.len(), 3, "row {id:?} lacks controls");
    (data_id, found)
}

/// The row `id` as rendered: its `data-id` and the controls it has.
async fn rendered(base: &str, id: &str) -> (String, Vec<(reqwest::Method, reqwest::Url)>) {
    let page = reqwest::Url::parse(&format!("{base}/")).unwrap();
    let html = client()
        .get(format!("{base}/todos"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for li in html.split("<li ").skip(1) {
        let li = &li[..li.find("</li>").expect("closed li")];
        let data_id = attr(li, "data-id").expect("data-id");
        if data_id != id {
            continue;
        }
        let mut found = Vec::new();
        for (name, method) in [
            ("hx-post", reqwest::Method::POST),
            ("hx-put", reqwest::Method::PUT),
            ("hx-delete", reqwest::Method::DELETE),
        ] {
            if let Some(url) = attr(li, name) {
                found.push((method, page.join(&url).unwrap()));
            }
        }
        return (data_id, found);
    }
    panic!("no row {id:?} in {html}");
}

/// The value of the attribute `name` in `tag`, HTML entities decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(
        tag[start..start + len]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'")
            .replace("&amp;", "&"),
    )
}

/// A row written by another writer (the push API, a script, an older version of the
/// app), which the create handler never saw.
async fn insert_row(server: &Server, id: &str, title: &str) {
    server
        .db
        .execute(
            "INSERT INTO todos (id, title, completed) VALUES ($1, $2, false)",
            args![id, title],
        )
        .await;
}

async fn every_control_acts_on_its_own_row_whatever_the_id_holds(backend: Backend) {
    let hostile = [
        format!("../todos/{OTHER}#"),
        format!("../{OTHER}"),
        format!("{OTHER}/toggle#"),
        format!("x?id={OTHER}"),
        format!("%2e%2e%2f{OTHER}"),
        format!("./../todos/{OTHER}"),
        "a b\"<é>&'".into(),
        "100%".into(),
        "...".into(),
    ];
    for id in &hostile {
        let db = TestDb::new(backend).await;
        let server = start(&db).await;
        add_todo(&server, OTHER, "someone else's").await;
        insert_row(&server, id, "hostile").await;

        let (data_id, urls) = controls(&server.base, id).await;
        assert_eq!(&data_id, id, "data-id is the id, HTML-escaped only");
        for (_, url) in &urls {
            assert!(
                url.path().starts_with("/todos/")
                    && url.fragment().is_none()
                    && url.query().is_none(),
                "id {id:?}: control goes to {url}"
            );
        }
        let [(toggle_m, toggle), (rename_m, rename), (delete_m, delete)] = &urls[..] else {
            panic!("three controls");
        };
        let send = |method: &reqwest::Method, url: &reqwest::Url, form: &[(&str, &str)]| {
            client()
                .request(method.clone(), url.clone())
                .form(form)
                .send()
        };
        let res = send(toggle_m, toggle, &[("completed", "true")])
            .await
            .unwrap();
        assert!(
            res.status().is_success(),
            "id {id:?}: toggle {toggle}: {}",
            res.status()
        );
        let res = send(rename_m, rename, &[("title", "renamed")])
            .await
            .unwrap();
        assert!(
            res.status().is_success(),
            "id {id:?}: rename {rename}: {}",
            res.status()
        );
        let mut rows = todos(&server.db).await;
        rows.sort();
        let mut want = vec![
            (OTHER.to_owned(), "someone else's".to_owned(), false),
            (id.clone(), "renamed".to_owned(), true),
        ];
        want.sort();
        assert_eq!(rows, want, "id {id:?}: the controls touched another row");

        let res = send(delete_m, delete, &[]).await.unwrap();
        assert!(
            res.status().is_success(),
            "id {id:?}: delete {delete}: {}",
            res.status()
        );
        assert_eq!(
            todos(&server.db).await,
            [(OTHER.into(), "someone else's".into(), false)],
            "id {id:?}: delete removed the wrong row"
        );
    }
}
both!(every_control_acts_on_its_own_row_whatever_the_id_holds);

async fn the_ids_no_url_can_name_are_shown_without_controls(backend: Backend) {
    // `.` and `..` are dot segments in any encoding, and an empty segment names nothing;
    // the create handler refuses them all, and a row another writer made with one is
    // shown read-only rather than with controls that would reach some other URL.
    for id in ["", ".", ".."] {
        let db = TestDb::new(backend).await;
        let server = start(&db).await;
        insert_row(&server, id, "unreachable").await;
        let (data_id, urls) = rendered(&server.base, id).await;
        assert_eq!(data_id, id);
        assert_eq!(urls, [], "id {id:?}");
    }
}
both!(the_ids_no_url_can_name_are_shown_without_controls);
