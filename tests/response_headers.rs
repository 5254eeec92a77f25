//! Answers that carry row data are never stored by a browser or proxy cache: pulls,
//! pushes and the event stream say `Cache-Control: no-store`, whatever their status.

mod common;

use common::*;
use serde_json::json;

async fn cache_control(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let value = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, value)
}

async fn row_data_is_never_cached_and_the_client_files_are_revalidated(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    add_todo(&server, &todo_id("a"), "private").await;
    let http = client();
    let base = &server.base;
    let push = |body: String, kind: &'static str| {
        http.post(format!("{base}/api/sync/todos"))
            .header("content-type", kind)
            .body(body)
            .send()
    };
    let cases = vec![
        ("pull", http.get(format!("{base}/api/sync/todos?since=0")).send().await, 200),
        ("pull of an unknown entity", http.get(format!("{base}/api/sync/nope?since=0")).send().await, 404),
        ("pull with a bad cursor", http.get(format!("{base}/api/sync/todos?since=x")).send().await, 400),
        ("push", push(json!({"changes": [{"id": todo_id("b"), "action": "create", "data": {"title": "t"}}]}).to_string(), "application/json").await, 200),
        ("refused push", push("{}".into(), "text/plain").await, 415),
        ("bad push", push(json!({"changes": [{"id": 5, "action": "delete"}]}).to_string(), "application/json").await, 422),
        ("event stream", http.get(format!("{base}/api/sync/events")).send().await, 200),
        ("event stream of unknown entities", http.get(format!("{base}/api/sync/events?entities=nope")).send().await, 404),
    ];
    for (what, res, status) in cases {
        let (got, value) = cache_control(res.expect(what)).await;
        assert_eq!((got, value.as_str()), (status, "no-store"), "{what}");
    }
    let (status, value) = cache_control(
        http.get(format!("{base}/api/sync/client.js"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, value.as_str()), (200, "no-cache"));
}
both!(row_data_is_never_cached_and_the_client_files_are_revalidated);

/// Request headers a case adds.
type Headers = Vec<(&'static str, String)>;

async fn a_push_from_another_site_is_refused_and_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.allowed_origins(["https://partner.example"])).await;
    let http = client();
    let host = server.base.trim_start_matches("http://").to_owned();
    let push = |id: &str, title: &str, headers: Headers| {
        let mut req = http
            .post(format!("{}/api/sync/todos", server.base))
            .header("content-type", "application/json")
            .body(json!({"changes": [{"id": todo_id(id), "action": "create", "data": {"title": title}}]}).to_string());
        for (name, value) in headers {
            req = req.header(name, value);
        }
        req.send()
    };
    let cases: Vec<(&str, Headers, u16)> = vec![
        (
            "cross-site fetch",
            vec![
                ("sec-fetch-site", "cross-site".into()),
                ("origin", "https://evil.example".into()),
            ],
            403,
        ),
        (
            "same-site sibling",
            vec![
                ("sec-fetch-site", "same-site".into()),
                ("origin", "https://other.example".into()),
            ],
            403,
        ),
        (
            "Origin only, another host",
            vec![("origin", "https://evil.example".into())],
            403,
        ),
        ("opaque origin", vec![("origin", "null".into())], 403),
        (
            "same origin",
            vec![
                ("sec-fetch-site", "same-origin".into()),
                ("origin", format!("http://{host}")),
            ],
            200,
        ),
        (
            "Origin only, this host",
            vec![("origin", format!("http://{host}"))],
            200,
        ),
        (
            "an allowed origin",
            vec![
                ("sec-fetch-site", "cross-site".into()),
                ("origin", "https://PARTNER.example".into()),
            ],
            200,
        ),
        ("not from a browser", vec![], 200),
    ];
    for (i, (what, headers, status)) in cases.into_iter().enumerate() {
        let res = push(&format!("o{i}"), what, headers).await.expect(what);
        assert_eq!(res.status().as_u16(), status, "{what}");
    }
    let titles: Vec<String> = todos(&server.db).await.into_iter().map(|t| t.1).collect();
    let mut expected = vec![
        "same origin",
        "Origin only, this host",
        "an allowed origin",
        "not from a browser",
    ];
    expected.sort();
    let mut titles = titles;
    titles.sort();
    assert_eq!(titles, expected);
}
both!(a_push_from_another_site_is_refused_and_changes_nothing);
