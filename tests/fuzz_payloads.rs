//! 100,000 random and malformed requests to push, pull and the event stream of a real
//! server with scopes: every answer is a 4xx, the server keeps answering, and the
//! database (tables and log) is exactly as it was. The requests come from a seeded
//! generator (`FUZZ_SEED` picks another run; the seed is printed on failure).

mod common;

use std::sync::Arc;

use common::*;
use futures_util::StreamExt;
use rhtmx_sync::{Principal, Scope, SyncEngine};

/// xorshift64*: small, seeded, and enough for picking shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "doc-of-a",
    "note-1",
    "../../etc/passwd",
    "' OR 1=1 --",
    "\"; DROP TABLE docs; --",
    "\u{0}",
    "\u{feff}",
    "ünïcødé",
    "𝕏",
    "00000000-0000-0000-0000-000000000000",
    "1e400",
    "-0",
    "NaN",
    "null",
    "<script>alert(1)</script>",
];

const KEYS: &[&str] = &[
    "changes",
    "client_id",
    "id",
    "action",
    "data",
    "client_version",
    "hlc",
    "tenant_id",
    "owner_id",
    "body",
    "entity",
    "extra",
];

fn string(r: &mut Rng) -> String {
    match r.below(4) {
        0 => (*r.pick(ODD_STRINGS)).to_owned(),
        1 => (0..r.below(40))
            .map(|_| char::from_u32(r.below(0x3000) as u32).unwrap_or('?'))
            .collect(),
        2 => "x".repeat(r.below(5000)),
        _ => format!("{}", r.next()),
    }
}

fn number(r: &mut Rng) -> String {
    (*r.pick(&[
        "0",
        "-1",
        "1.5",
        "9007199254740993",
        "-9223372036854775809",
        "1e308",
        "123456789012345678901234567890",
        "5e-324",
    ]))
    .to_owned()
}

/// A random JSON text, `depth` levels deep at most.
fn json(r: &mut Rng, depth: usize) -> String {
    let q = |s: String| serde_json::to_string(&s).unwrap();
    match if depth == 0 { r.below(5) } else { r.below(7) } {
        0 => "null".into(),
        1 => (*r.pick(&["true", "false"])).into(),
        2 => number(r),
        3 | 4 => q(string(r)),
        5 => {
            let items: Vec<String> = (0..r.below(4)).map(|_| json(r, depth - 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let fields: Vec<String> = (0..r.below(5))
                .map(|_| format!("{}:{}", q((*r.pick(KEYS)).to_owned()), json(r, depth - 1)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

/// A change that looks almost right: known keys, often the right types.
fn change(r: &mut Rng) -> String {
    let mut fields = Vec::new();
    if !r.chance(6) {
        let id = if r.chance(3) {
            json(r, 1)
        } else {
            serde_json::to_string(&string(r)).unwrap()
        };
        fields.push(format!("\"id\":{id}"));
    }
    if !r.chance(6) {
        let action = *r.pick(&[
            "\"create\"",
            "\"update\"",
            "\"delete\"",
            "\"upsert\"",
            "1",
            "null",
        ]);
        fields.push(format!("\"action\":{action}"));
    }
    if !r.chance(3) {
        let data: Vec<String> = (0..r.below(4))
            .map(|_| {
                let key = *r.pick(&["tenant_id", "owner_id", "body", "id", "nope", ""]);
                format!("\"{key}\":{}", json(r, 1))
            })
            .collect();
        fields.push(format!("\"data\":{{{}}}", data.join(",")));
    }
    if r.chance(3) {
        fields.push(format!("\"client_version\":{}", json(r, 0)));
    }
    if r.chance(3) {
        fields.push(format!("\"hlc\":{}", json(r, 0)));
    }
    format!("{{{}}}", fields.join(","))
}

fn push_body(r: &mut Rng) -> Vec<u8> {
    match r.below(8) {
        0 => (0..r.below(300)).map(|_| r.next() as u8).collect(),
        1 => json(r, 4).into_bytes(),
        2 => {
            // Cut short.
            let whole = format!("{{\"changes\":[{}]}}", change(r));
            let cut = r.below(whole.len().max(1));
            whole.as_bytes()[..cut].to_vec()
        }
        3 => format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
        _ => {
            let n = 1 + r.below(4);
            let changes: Vec<String> = (0..n).map(|_| change(r)).collect();
            let extra = if r.chance(4) {
                format!(",\"client_id\":{}", json(r, 0))
            } else {
                String::new()
            };
            format!("{{\"changes\":[{}]{extra}}}", changes.join(",")).into_bytes()
        }
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// One request: method, path and query, headers, body.
type Request = (
    reqwest::Method,
    String,
    Vec<(&'static str, String)>,
    Vec<u8>,
);

fn request(r: &mut Rng) -> Request {
    let entity = (*r.pick(&[
        "docs",
        "notes",
        "secrets",
        "nope",
        "events",
        "",
        "docs%00",
        "..%2Fdocs",
    ]))
    .to_owned();
    match r.below(3) {
        // Push: as anonymous, who may write nothing (a well-formed change answers 403,
        // a malformed one 400, 415 or 422); or to an entity not open to pushes.
        0 => {
            let mut headers = Vec::new();
            match r.below(4) {
                0 => {}
                1 => headers.push((
                    "content-type",
                    (*r.pick(&[
                        "text/plain",
                        "application/x-www-form-urlencoded",
                        "application/jsonx",
                        "",
                    ]))
                    .to_owned(),
                )),
                _ => headers.push(("content-type", "application/json".to_owned())),
            }
            if r.chance(4) {
                headers.push((
                    "x-rhtmx-client-id",
                    string(r).chars().filter(|c| c.is_ascii_graphic()).collect(),
                ));
            }
            (
                reqwest::Method::POST,
                format!("/api/sync/{entity}"),
                headers,
                push_body(r),
            )
        }
        // Pull with a malformed cursor or limit, or of an entity nobody may read.
        1 => {
            let query = match r.below(4) {
                // (An empty `since` is the start, not a mistake: never sent here.)
                0 => format!("since={}", enc(&format!("{}!", string(r)))),
                1 => format!(
                    "since=0&limit={}",
                    enc(r.pick::<&str>(&["0", "-5", "x", "1e3", "99999999999999999999", ""]))
                ),
                2 => format!("since={}.{}", r.next() % 1000, enc(&string(r))),
                _ => format!("{}={}", enc(&string(r)), enc(&string(r))),
            };
            let entity = if r.chance(2) {
                "secrets".to_owned()
            } else {
                entity
            };
            let query = if entity == "secrets" || entity == "nope" {
                format!("since=0&{query}")
            } else {
                query
            };
            (
                reqwest::Method::GET,
                format!("/api/sync/{entity}?{query}"),
                Vec::new(),
                Vec::new(),
            )
        }
        // The event stream with a malformed resume point or only unknown entities.
        _ => {
            let mut headers = Vec::new();
            let query = if r.chance(2) {
                headers.push((
                    "last-event-id",
                    string(r)
                        .chars()
                        .filter(|c| c.is_ascii_graphic())
                        .collect::<String>()
                        + "x",
                ));
                String::new()
            } else if r.chance(2) {
                format!("last_event_id={}x", enc(&string(r)))
            } else {
                format!(
                    "entities={}",
                    enc(&format!("zz{}", string(r).replace(',', "")))
                )
            };
            (
                reqwest::Method::GET,
                format!("/api/sync/events?{query}"),
                headers,
                Vec::new(),
            )
        }
    }
}

struct Session;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Session {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let _ = parts;
        Ok(Session)
    }
}

/// Every request is anonymous: it may read nothing scoped and write nothing.
impl From<Session> for Principal {
    fn from(_: Session) -> Principal {
        Principal::anonymous()
    }
}

async fn random_and_malformed_requests_all_answer_4xx_and_change_nothing(backend: Backend) {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_0001);
    let db = TestDb::new(backend).await;
    let pool = app::open(&db.url).await.unwrap();
    let sql = Db::from(&pool);
    let note_key = match backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY",
        Backend::Postgres => "bigserial PRIMARY KEY",
    };
    for statement in [
        "CREATE TABLE docs (id TEXT PRIMARY KEY, tenant_id TEXT, body TEXT)".to_owned(),
        format!("CREATE TABLE notes (id {note_key}, owner_id TEXT, body TEXT NOT NULL)"),
        "CREATE TABLE secrets (id TEXT PRIMARY KEY, body TEXT)".to_owned(),
        "INSERT INTO docs VALUES ('doc-of-a', 'a', 'x'), ('doc-of-b', 'b', 'y')".to_owned(),
        "INSERT INTO notes VALUES (1, 'alice', 'n')".to_owned(),
        "INSERT INTO secrets VALUES ('s', 'z')".to_owned(),
    ] {
        sql.execute(&statement, args![]).await;
    }
    let engine = SyncEngine::builder(pool.clone())
        .entity_named("docs")
        .entity_named("notes")
        .entity_named("secrets")
        .authenticate::<Session>()
        .scope("docs", Scope::tenant("tenant_id"))
        .scope("notes", Scope::owner("owner_id"))
        .writable("docs")
        .writable("notes")
        .build()
        .await
        .unwrap();
    let (base, _task) = serve(engine.routes()).await;
    let before = every_row(&sql, &engine).await;
    assert!(before.contains("doc-of-a"), "{before}");

    let total: usize = std::env::var("FUZZ_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let mut rng = Rng(seed);
    let requests: Vec<Request> = (0..total).map(|_| request(&mut rng)).collect();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let base = Arc::new(base);
    let bad = futures_util::stream::iter(requests.into_iter().enumerate())
        .map(|(i, (method, path, headers, body))| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let mut req = http.request(method.clone(), format!("{base}{path}"));
                for (name, value) in &headers {
                    req = req.header(*name, value.as_str());
                }
                let res = req.body(body.clone()).send().await;
                match res {
                    Ok(res) if res.status().is_client_error() => None,
                    Ok(res) => Some(format!(
                        "#{i} {method} {path} {headers:?} {:?} -> {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)]),
                        res.status()
                    )),
                    Err(e) => Some(format!("#{i} {method} {path}: {e}")),
                }
            }
        })
        .buffer_unordered(32)
        .filter_map(|bad| async move { bad })
        .take(5)
        .collect::<Vec<_>>()
        .await;
    assert!(bad.is_empty(), "seed {seed}: {bad:#?}");
    // Still up, still serving, nothing changed.
    assert_eq!(
        get_status(&format!("{base}/api/sync/docs?since=0")).await,
        200
    );
    assert_eq!(every_row(&sql, &engine).await, before, "seed {seed}");
}
both!(random_and_malformed_requests_all_answer_4xx_and_change_nothing);
