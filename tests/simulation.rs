//! Deterministic simulation of conflict resolution.
//!
//! Up to 8 clients, each with its own skewed and jumping clock, create, update and
//! delete shared rows while randomly partitioned from the server; their requests and
//! the answers are delayed, duplicated (a retry after a lost answer, or a stray copy),
//! dropped during partitions and delivered in any order. Each client pulls, observes
//! the HLCs it pulls, keeps an optimistic view and a FIFO outbox, as the browser client
//! does. After healing, every outbox is acknowledged and:
//!
//! - every client holds exactly the server's rows;
//! - every acknowledged change on a live row left a log entry with its HLC, and each of
//!   its fields either holds the client's value, or the entry's conflict says the field
//!   was lost, or a later entry wrote the field: nothing is lost silently;
//! - under last-write-wins with delete-wins, the outcome is the one a reference model
//!   predicts without looking at the order of arrival: a row is gone iff someone
//!   deleted it, and every field holds the value of the latest user action by HLC.
//!
//! The server is the pure merge ([`rhtmx_sync::conflict::merge`]) over rows in memory
//! for thousands of seeds; for a few seeds the same run goes over HTTP to the real
//! engine on a SQLite file, and its every answer must equal the model's.
//!
//! A failure names its seed; `RHTMX_SIM_SEED=<n> cargo test --test simulation` runs
//! exactly that seed (in each configuration).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use rhtmx_sync::conflict::{
    merge, Conflict, ConflictResolver, Entry, FieldConflict, History, Policy, Row, Status, Write,
};
use rhtmx_sync::{Action, Hlc, HlcClock, SyncEngine, SyncStrategy};
use serde_json::{json, Value};

mod pg;

/// The synced columns besides `id`, in table order.
const COLUMNS: [&str; 3] = ["title", "n", "done"];
const TABLE: &str = "CREATE TABLE items (id TEXT PRIMARY KEY NOT NULL, \
     title TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 0, done BOOLEAN NOT NULL DEFAULT false)";
/// Simulated time starts here (mid-2025): in the past, so never beyond the drift limit.
const T0: i64 = 1_750_000_000_000;

// ---------------------------------------------------------------------------------------
// Randomness and configuration

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone, Copy)]
struct Config {
    strategy: SyncStrategy,
    delete_wins: bool,
    /// Clients send no client id: only HLCs tell a replay from a new change.
    anonymous: bool,
}

/// The custom strategy of the simulation: the larger value wins (commutative, so it has
/// an answer whatever the order), `true` beats `false`.
fn larger(c: &FieldConflict<'_>) -> Value {
    let (s, k) = (c.server, c.client);
    let client_larger = match (s, k) {
        (Value::Number(a), Value::Number(b)) => b.as_i64() > a.as_i64(),
        (Value::String(a), Value::String(b)) => b > a,
        (Value::Bool(a), Value::Bool(b)) => b > a,
        _ => true,
    };
    if client_larger {
        k.clone()
    } else {
        s.clone()
    }
}

// ---------------------------------------------------------------------------------------
// The server: a model in memory, or the real engine over HTTP

trait Server {
    async fn push(&mut self, client_id: Option<&str>, changes: &[Value]) -> Value;
    async fn pull(&mut self, since: i64) -> Value;
    async fn rows(&mut self) -> BTreeMap<String, Row>;
}

/// One log entry of the model.
struct Logged {
    id: String,
    entry: Entry,
    conflict: Option<Conflict>,
}

/// The server as the pure merge over rows in memory, writing the log as the engine's
/// triggers and `apply` do.
struct Model {
    config: Config,
    rows: BTreeMap<String, Row>,
    log: Vec<Logged>,
    by_id: BTreeMap<String, Vec<usize>>,
}

impl Model {
    fn new(config: Config) -> Model {
        Model {
            config,
            rows: BTreeMap::new(),
            log: Vec::new(),
            by_id: BTreeMap::new(),
        }
    }

    fn append(
        &mut self,
        id: &str,
        action: Action,
        data: Option<Row>,
        changed: Option<Vec<String>>,
    ) {
        let version = self.log.len() as i64 + 1;
        self.by_id
            .entry(id.to_owned())
            .or_default()
            .push(self.log.len());
        self.log.push(Logged {
            id: id.to_owned(),
            entry: Entry {
                version,
                action,
                changed,
                data,
                hlc: Hlc::new(0, 0, 0),
                origin_hlc: None,
                client_id: None,
            },
            conflict: None,
        });
    }

    /// Causal stamping, as the log does it (`rhtmx-sync/src/causal.rs`): entry `i` is
    /// moved one millisecond after the greatest HLC of the earlier writes it overwrites.
    fn stamp(&mut self, i: usize) {
        let e = self.log[i].entry.clone();
        let earlier: Vec<&Entry> = self.by_id[&self.log[i].id]
            .iter()
            .filter(|&&j| j < i)
            .map(|&j| &self.log[j].entry)
            .collect();
        let report = e.action == Action::Update && e.changed.as_deref() == Some(&[]);
        let overwritten = earlier
            .iter()
            .filter(|p| {
                e.action != Action::Update
                    || p.action != Action::Update
                    || match (&p.changed, &e.changed) {
                        (Some(a), Some(b)) => a.iter().any(|f| b.contains(f)),
                        _ => true,
                    }
            })
            .map(|p| p.hlc)
            .max();
        match overwritten {
            Some(o) if !report && o > e.hlc => {
                let logged = &mut self.log[i].entry;
                logged.origin_hlc = Some(e.hlc);
                logged.hlc = Hlc::new(o.physical_ms() + 1, 99_999, e.hlc.node());
            }
            _ => {}
        }
    }

    fn push_one(&mut self, client_id: Option<&str>, c: &Value, answer: &mut Answer) {
        let id = c["id"].as_str().unwrap().to_owned();
        let action: Action = serde_json::from_value(c["action"].clone()).unwrap();
        let mut fields: Row = c
            .get("data")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        fields.remove("id");
        let hlc: Hlc = c["hlc"].as_str().unwrap().parse().unwrap();
        let change = rhtmx_sync::conflict::Change {
            entity: "items".into(),
            id: json!(id),
            action,
            fields,
            hlc,
            client_id: client_id.map(str::to_owned),
            base: c.get("client_version").and_then(Value::as_i64),
        };
        let entries: Vec<Entry> = self
            .by_id
            .get(&id)
            .map(|ix| ix.iter().map(|&i| self.log[i].entry.clone()).collect())
            .unwrap_or_default();
        let current = self.rows.get(&id).cloned();
        let history = History::from_log(&entries, &change, current.is_some());
        let resolver: &dyn ConflictResolver = &larger;
        let policy = Policy {
            strategy: self.config.strategy,
            resolver: Some(resolver),
            delete_wins: self.config.delete_wins,
        };
        let d = merge(&change, current.as_ref(), &history, &policy);
        let before = self.log.len();
        match &d.write {
            Write::Insert(row) | Write::Restore(row) => {
                let mut full = Row::new();
                full.insert("title".into(), json!(""));
                full.insert("n".into(), json!(0));
                full.insert("done".into(), json!(false));
                full.extend(row.clone());
                self.rows.insert(id.clone(), full.clone());
                self.append(&id, Action::Create, Some(full), None);
            }
            Write::Update(set) => {
                let old = current.clone().unwrap();
                let mut new = old.clone();
                new.extend(set.clone());
                let changed: Vec<String> = COLUMNS
                    .iter()
                    .filter(|c| old.get(**c) != new.get(**c))
                    .map(|c| (*c).to_owned())
                    .collect();
                if !changed.is_empty() {
                    self.rows.insert(id.clone(), new.clone());
                    self.append(&id, Action::Update, Some(new), Some(changed));
                }
            }
            Write::Delete => {
                self.rows.remove(&id);
                self.append(&id, Action::Delete, None, None);
            }
            _ => {}
        }
        let must_record =
            d.write == Write::Tombstone || d.conflict.is_some() || !d.touched.is_empty();
        if self.log.len() == before && must_record {
            let exists = !matches!(d.write, Write::Delete | Write::Tombstone) && current.is_some();
            if exists {
                self.append(
                    &id,
                    Action::Update,
                    current.clone(),
                    // In column order, as every `changed` list.
                    Some(with_touched(&[], &d.touched)),
                );
            } else {
                self.append(&id, Action::Delete, None, None);
            }
        }
        let mut conflict = d.conflict.clone();
        let last = self.log.len().saturating_sub(1);
        for i in before..self.log.len() {
            let logged = &mut self.log[i];
            if let Some(changed) = &logged.entry.changed {
                logged.entry.changed = Some(with_touched(changed, &d.touched));
            }
            logged.entry.hlc = hlc;
            logged.entry.client_id = client_id.map(str::to_owned);
            self.stamp(i);
            let logged = &mut self.log[i];
            if i == last {
                if let Some(c) = &mut conflict {
                    c.version = Some(logged.entry.version);
                }
                logged.conflict = conflict.clone();
            }
        }
        match d.status {
            Status::NotFound => answer
                .conflicts
                .push(json!({"id": id, "action": action, "reason": "not_found"})),
            Status::Deleted => {}
            Status::Duplicate => answer.duplicates.push(json!(id)),
            _ => answer.applied.push(json!(id)),
        }
        if let Some(c) = conflict {
            answer.conflicts.push(serde_json::to_value(c).unwrap());
        }
    }

    fn encode(&self, logged: &Logged) -> Value {
        let e = &logged.entry;
        let mut m = serde_json::Map::new();
        m.insert("id".into(), json!(logged.id));
        m.insert("action".into(), json!(e.action));
        if let Some(data) = &e.data {
            let mut data = data.clone();
            data.insert("id".into(), json!(logged.id));
            m.insert("data".into(), Value::Object(data));
        }
        m.insert("version".into(), json!(e.version));
        if let Some(changed) = &e.changed {
            m.insert("changed".into(), json!(changed));
        }
        if let Some(client) = &e.client_id {
            m.insert("client_id".into(), json!(client));
        }
        m.insert("hlc".into(), json!(e.hlc.to_string()));
        if let Some(origin) = &e.origin_hlc {
            m.insert("origin_hlc".into(), json!(origin.to_string()));
        }
        if let Some(c) = &logged.conflict {
            m.insert("conflict".into(), serde_json::to_value(c).unwrap());
        }
        Value::Object(m)
    }
}

/// The parts of a push answer the model builds change by change.
#[derive(Default)]
struct Answer {
    applied: Vec<Value>,
    duplicates: Vec<Value>,
    conflicts: Vec<Value>,
}

/// The engine's rule: a field set to the value it had is still the change's.
fn with_touched(changed: &[String], touched: &[String]) -> Vec<String> {
    if touched.iter().all(|t| changed.contains(t)) {
        return changed.to_vec();
    }
    COLUMNS
        .iter()
        .filter(|c| changed.iter().chain(touched).any(|f| f == *c))
        .map(|c| (*c).to_owned())
        .collect()
}

impl Server for Model {
    async fn push(&mut self, client_id: Option<&str>, changes: &[Value]) -> Value {
        let mut answer = Answer::default();
        for c in changes {
            self.push_one(client_id, c, &mut answer);
        }
        // The simulation's clocks stay within the server's tolerance: nothing is clamped.
        json!({"version": self.log.len(), "conflicts": answer.conflicts,
               "applied": answer.applied, "duplicates": answer.duplicates, "clamped": []})
    }

    async fn pull(&mut self, since: i64) -> Value {
        let changes: Vec<Value> = self.log[since as usize..]
            .iter()
            .map(|l| self.encode(l))
            .collect();
        // A whole page: it ends at the head, which it names.
        let head = self.log.len();
        json!({"entity": "items", "changes": changes, "version": head, "head": head, "has_more": false})
    }

    async fn rows(&mut self) -> BTreeMap<String, Row> {
        self.rows.clone()
    }
}

/// The real engine on a SQLite file or a PostgreSQL database, over HTTP on 127.0.0.1.
struct Engine {
    base: String,
    http: reqwest::Client,
    pool: rhtmx_sync::Pool,
    _dir: tempfile::TempDir,
    _engine: SyncEngine,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Engine {
    async fn start(config: Config, postgres: bool) -> Engine {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
        let dir = tempfile::tempdir().unwrap();
        let pool: rhtmx_sync::Pool = if postgres {
            let pool = pg::database().await;
            sqlx::query(&TABLE.replace("INTEGER", "BIGINT"))
                .execute(&pool)
                .await
                .unwrap();
            pool.into()
        } else {
            let options = SqliteConnectOptions::new()
                .filename(dir.path().join("sim.db"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .connect_with(options)
                .await
                .unwrap();
            sqlx::query(TABLE).execute(&pool).await.unwrap();
            pool.into()
        };
        let mut builder = SyncEngine::builder(pool.clone())
            .entity_named("items")
            .writable("items")
            .delete_wins("items", config.delete_wins);
        builder = match config.strategy {
            SyncStrategy::Custom => builder.resolver("items", larger),
            s => builder.strategy("items", s),
        };
        let engine = builder.build().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/sync/items", listener.local_addr().unwrap());
        let router: axum::Router = engine.routes();
        let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Engine {
            base,
            http: reqwest::Client::new(),
            pool,
            _dir: dir,
            _engine: engine,
            task,
        }
    }
}

impl Server for Engine {
    async fn push(&mut self, client_id: Option<&str>, changes: &[Value]) -> Value {
        let mut body = json!({"changes": changes});
        if let Some(id) = client_id {
            body["client_id"] = json!(id);
        }
        let res = self.http.post(&self.base).json(&body).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    async fn pull(&mut self, since: i64) -> Value {
        let url = format!("{}?since={since}&limit=10000", self.base);
        let res = self.http.get(url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let mut page: Value = res.json().await.unwrap();
        assert_eq!(page["has_more"], false);
        // The cursor's tag is the server's own (its log's identity); the model has none.
        let cursor = page["cursor"].as_str().expect("a pull ends at a cursor");
        assert!(
            cursor.starts_with(&format!("{}.", page["version"])),
            "{cursor}"
        );
        page.as_object_mut().unwrap().remove("cursor");
        page
    }

    async fn rows(&mut self) -> BTreeMap<String, Row> {
        const SELECT: &str = "SELECT id, title, n, done FROM items";
        let rows: Vec<(String, String, i64, bool)> = match &self.pool {
            rhtmx_sync::Pool::Sqlite(pool) => sqlx::query_as(SELECT).fetch_all(pool).await,
            rhtmx_sync::Pool::Postgres(pool) => sqlx::query_as(SELECT).fetch_all(pool).await,
            _ => unreachable!("the tests build both backends"),
        }
        .unwrap();
        rows.into_iter()
            .map(|(id, title, n, done)| {
                let row = json!({"title": title, "n": n, "done": done});
                (id, row.as_object().unwrap().clone())
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Clients and the network

/// A change not yet acknowledged, with the batch it was last sent in.
struct Inflight {
    batch: u64,
    changes: Vec<Value>,
    sent_at: i64,
}

struct Client {
    name: String,
    clock: HlcClock,
    /// Skew and jumps of this client's physical clock against simulated time.
    offset: Arc<AtomicI64>,
    online: bool,
    /// The version pulled up to: the base of its changes.
    version: i64,
    server_rows: BTreeMap<String, Row>,
    /// What its user sees: the pulled rows with its pending changes applied.
    rows: BTreeMap<String, Row>,
    outbox: VecDeque<Value>,
    inflight: Option<Inflight>,
    pull_sent: Option<i64>,
    created: u64,
}

impl Client {
    fn new(i: usize, seed: u64, now: Arc<AtomicI64>, rng: &mut Rng) -> Client {
        let skew = rng.below(2 * 3_600_000) as i64 - 3_600_000;
        let offset = Arc::new(AtomicI64::new(skew));
        let o = offset.clone();
        // A distinct node per client, derived from the seed.
        let node = (seed << 8) | (i as u64 + 1);
        let clock = HlcClock::with_physical(node, move || {
            (now.load(Ordering::SeqCst) + o.load(Ordering::SeqCst)) as u64
        });
        Client {
            name: format!("c{i}"),
            clock,
            offset,
            online: true,
            version: 0,
            server_rows: BTreeMap::new(),
            rows: BTreeMap::new(),
            outbox: VecDeque::new(),
            inflight: None,
            pull_sent: None,
            created: 0,
        }
    }

    /// The user does something: create, update or delete.
    fn act(&mut self, rng: &mut Rng) -> Value {
        let hlc = self.clock.now().to_string();
        let ids: Vec<&String> = self.rows.keys().collect();
        let roll = rng.below(100);
        let change = if ids.is_empty() || roll < 25 {
            self.created += 1;
            json!({"id": format!("{}-{}", self.name, self.created), "action": "create", "hlc": hlc,
                   "data": {"title": title(rng), "n": rng.below(10), "done": rng.chance(50)}})
        } else if roll < 87 {
            let id = ids[rng.below(ids.len() as u64) as usize].clone();
            let mut data = serde_json::Map::new();
            while data.is_empty() {
                for (i, column) in COLUMNS.iter().enumerate() {
                    if rng.chance(45) {
                        let value = match i {
                            0 => json!(title(rng)),
                            1 => json!(rng.below(10)),
                            _ => json!(rng.chance(50)),
                        };
                        data.insert((*column).to_owned(), value);
                    }
                }
            }
            json!({"id": id, "action": "update", "hlc": hlc, "client_version": self.version, "data": data})
        } else {
            let id = ids[rng.below(ids.len() as u64) as usize].clone();
            json!({"id": id, "action": "delete", "hlc": hlc, "client_version": self.version})
        };
        apply_local(&mut self.rows, &change);
        self.outbox.push_back(change.clone());
        change
    }

    /// Applies a pull: the server's rows move on, the pending changes are replayed on top.
    fn pulled(&mut self, page: &Value) {
        for c in page["changes"].as_array().unwrap() {
            if c["version"].as_i64().unwrap() <= self.version {
                continue;
            }
            let hlc: Hlc = c["hlc"].as_str().unwrap().parse().unwrap();
            self.clock.observe(hlc).unwrap();
            let id = c["id"].as_str().unwrap().to_owned();
            match c["action"].as_str().unwrap() {
                "delete" => {
                    self.server_rows.remove(&id);
                }
                _ => {
                    let mut row = c["data"].as_object().unwrap().clone();
                    row.remove("id");
                    self.server_rows.insert(id, row);
                }
            }
        }
        self.version = self.version.max(page["version"].as_i64().unwrap());
        self.rows = self.server_rows.clone();
        for change in &self.outbox {
            apply_local(&mut self.rows, change);
        }
    }
}

fn title(rng: &mut Rng) -> String {
    // Few titles, so that two users sometimes make the same change.
    format!("t{}", rng.below(12))
}

fn apply_local(rows: &mut BTreeMap<String, Row>, change: &Value) {
    let id = change["id"].as_str().unwrap();
    let mut data = change
        .get("data")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    data.remove("id");
    match change["action"].as_str().unwrap() {
        "create" => rows.entry(id.to_owned()).or_default().extend(data),
        "update" => {
            if let Some(row) = rows.get_mut(id) {
                row.extend(data);
            }
        }
        _ => {
            rows.remove(id);
        }
    }
}

enum Payload {
    Push {
        client: usize,
        batch: u64,
        changes: Vec<Value>,
    },
    PushAnswer {
        client: usize,
        batch: u64,
    },
    Pull {
        client: usize,
        since: i64,
    },
    PullAnswer {
        client: usize,
        page: Value,
    },
}

struct Message {
    at: i64,
    payload: Payload,
}

impl Message {
    fn client(&self) -> usize {
        match self.payload {
            Payload::Push { client, .. }
            | Payload::PushAnswer { client, .. }
            | Payload::Pull { client, .. }
            | Payload::PullAnswer { client, .. } => client,
        }
    }
}

struct Sim<S> {
    config: Config,
    rng: Rng,
    now: Arc<AtomicI64>,
    clients: Vec<Client>,
    network: Vec<Message>,
    server: S,
    next_batch: u64,
    /// Every change made, in the order made.
    made: Vec<Value>,
    /// When each change (by row and HLC) first reached the server.
    arrived: BTreeMap<(String, String), usize>,
    /// Every answer the server gave, in order: two servers that behave alike give the
    /// same transcript.
    transcript: Vec<Value>,
}

/// How long a client waits for an answer before sending again.
const TIMEOUT: i64 = 400;

impl<S: Server> Sim<S> {
    fn new(seed: u64, config: Config, server: S) -> Sim<S> {
        let mut rng = Rng::new(seed);
        let now = Arc::new(AtomicI64::new(T0));
        let n = 1 + rng.below(8) as usize;
        let clients = (0..n)
            .map(|i| Client::new(i, seed, now.clone(), &mut rng))
            .collect();
        Sim {
            config,
            rng,
            now,
            clients,
            network: Vec::new(),
            server,
            next_batch: 0,
            made: Vec::new(),
            arrived: BTreeMap::new(),
            transcript: Vec::new(),
        }
    }

    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn delay(&mut self) -> i64 {
        if self.rng.chance(10) {
            200 + self.rng.below(3000) as i64
        } else {
            1 + self.rng.below(150) as i64
        }
    }

    fn send(&mut self, payload: Payload) {
        let at = self.now() + self.delay();
        self.network.push(Message { at, payload });
    }

    /// A client sends its next batch, or pulls (`pull`: only pulls; otherwise pulls only
    /// when it has nothing to send, and `may_pull`).
    fn client_sends(&mut self, i: usize, pull: bool, may_pull: bool) {
        let now = self.now();
        if !self.clients[i].online {
            return;
        }
        let c = &self.clients[i];
        if !pull && c.inflight.is_none() && !c.outbox.is_empty() {
            let n = 1 + self.rng.below(3) as usize;
            let c = &mut self.clients[i];
            let changes: Vec<Value> = c.outbox.iter().take(n).cloned().collect();
            self.next_batch += 1;
            let batch = self.next_batch;
            c.inflight = Some(Inflight {
                batch,
                changes: changes.clone(),
                sent_at: now,
            });
            self.send(Payload::Push {
                client: i,
                batch,
                changes,
            });
        } else if c.pull_sent.is_none() && (pull || may_pull) {
            let c = &mut self.clients[i];
            c.pull_sent = Some(now);
            let since = c.version;
            self.send(Payload::Pull { client: i, since });
        }
    }

    /// Clients that waited too long send again: the same batch, a duplicate if the first
    /// got through.
    fn timeouts(&mut self) {
        let now = self.now();
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if !c.online {
                continue;
            }
            if c.pull_sent.is_some_and(|t| now - t > TIMEOUT) {
                c.pull_sent = None;
            }
            let resend = c
                .inflight
                .as_mut()
                .filter(|f| now - f.sent_at > TIMEOUT)
                .map(|f| {
                    f.sent_at = now;
                    (f.batch, f.changes.clone())
                });
            if let Some((batch, changes)) = resend {
                self.send(Payload::Push {
                    client: i,
                    batch,
                    changes,
                });
            }
        }
    }

    /// Delivers one due message at random (so in any order); returns whether there was
    /// one. A message to or from a partitioned client is held or lost.
    async fn deliver(&mut self) -> bool {
        let now = self.now();
        let due: Vec<usize> = (0..self.network.len())
            .filter(|&i| self.network[i].at <= now)
            .collect();
        if due.is_empty() {
            return false;
        }
        let pick = due[self.rng.below(due.len() as u64) as usize];
        if !self.clients[self.network[pick].client()].online {
            if self.rng.chance(50) {
                self.network.swap_remove(pick);
            }
            return true;
        }
        let message = self.network.swap_remove(pick);
        match message.payload {
            Payload::Push {
                client,
                batch,
                changes,
            } => {
                for c in &changes {
                    let key = (c["id"].to_string(), c["hlc"].to_string());
                    let next = self.arrived.len();
                    self.arrived.entry(key).or_insert(next);
                }
                let name = self.clients[client].name.clone();
                let name = (!self.config.anonymous).then_some(name.as_str());
                let answer = self.server.push(name, &changes).await;
                self.transcript.push(answer);
                self.send(Payload::PushAnswer { client, batch });
            }
            Payload::Pull { client, since } => {
                let page = self.server.pull(since).await;
                self.transcript.push(page.clone());
                self.send(Payload::PullAnswer { client, page });
            }
            Payload::PushAnswer { client, batch } => {
                let c = &mut self.clients[client];
                if let Some(inflight) = c.inflight.take_if(|f| f.batch == batch) {
                    for _ in 0..inflight.changes.len() {
                        c.outbox.pop_front();
                    }
                }
            }
            Payload::PullAnswer { client, page } => {
                let c = &mut self.clients[client];
                c.pulled(&page);
                c.pull_sent = None;
            }
        }
        true
    }

    fn tick(&mut self, max: u64) {
        let dt = self.rng.below(max) as i64;
        self.now.fetch_add(dt, Ordering::SeqCst);
        for i in 0..self.clients.len() {
            // Clocks drift, and now and then jump back (NTP, a user fixing the time).
            if self.rng.chance(1) {
                let back = self.rng.below(120_000) as i64;
                self.clients[i].offset.fetch_sub(back, Ordering::SeqCst);
            } else if self.rng.chance(20) {
                let ahead = self.rng.below(5) as i64;
                self.clients[i].offset.fetch_add(ahead, Ordering::SeqCst);
            }
        }
    }

    async fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.tick(40);
            self.timeouts();
            let n = self.clients.len() as u64;
            let i = self.rng.below(n) as usize;
            match self.rng.below(100) {
                0..=29 => {
                    let change = self.clients[i].act(&mut self.rng);
                    self.made.push(change);
                }
                30..=34 => self.clients[i].online = !self.clients[i].online,
                35..=59 => {
                    let pull = self.rng.chance(40);
                    self.client_sends(i, pull, true);
                }
                60..=96 => {
                    self.deliver().await;
                }
                _ => {
                    // A stray copy of a request in flight.
                    let pushes: Vec<usize> = (0..self.network.len())
                        .filter(|&k| matches!(self.network[k].payload, Payload::Push { .. }))
                        .collect();
                    if !pushes.is_empty() {
                        let k = pushes[self.rng.below(pushes.len() as u64) as usize];
                        if let Payload::Push {
                            client,
                            batch,
                            changes,
                        } = &self.network[k].payload
                        {
                            let copy = Payload::Push {
                                client: *client,
                                batch: *batch,
                                changes: changes.clone(),
                            };
                            self.send(copy);
                        }
                    }
                }
            }
        }
        self.heal().await;
    }

    /// Ends every partition and runs until every outbox is acknowledged and the network
    /// is empty, then brings every client up to the head.
    async fn heal(&mut self) {
        for c in &mut self.clients {
            c.online = true;
        }
        for round in 0.. {
            assert!(round < 100_000, "the simulation did not settle");
            let settled = self.network.is_empty()
                && self
                    .clients
                    .iter()
                    .all(|c| c.outbox.is_empty() && c.inflight.is_none());
            if settled {
                break;
            }
            self.tick(20);
            self.timeouts();
            for i in 0..self.clients.len() {
                self.client_sends(i, false, false);
            }
            while self.deliver().await {}
        }
        let head = self.server.pull(0).await;
        for c in &mut self.clients {
            c.pulled(&head);
        }
        self.transcript.push(head);
    }

    /// Checks the invariants; returns the server's final rows.
    async fn check(&mut self) -> BTreeMap<String, Row> {
        let config = self.config;
        let rows = self.server.rows().await;
        let log_page = self.transcript.last().unwrap().clone();
        let log = log_page["changes"].as_array().unwrap();
        let head = log_page["version"].as_i64().unwrap();
        for c in &self.clients {
            assert_eq!(c.version, head, "{} is behind", c.name);
            assert!(c.outbox.is_empty(), "{} has unacknowledged changes", c.name);
            assert_eq!(c.rows, rows, "{} differs from the server", c.name);
        }
        // Nothing lost silently.
        for w in &self.made {
            let id = w["id"].as_str().unwrap();
            let Some(row) = rows.get(id) else { continue };
            // Found by the HLC its client gave it, which the log may have moved.
            let mine = log
                .iter()
                .find(|e| e["id"] == id && (e["hlc"] == w["hlc"] || e["origin_hlc"] == w["hlc"]));
            if w["action"] == "delete" {
                // A delete of a live row lost: it says so, or a newer write restored the row.
                let lost = mine.is_some_and(|e| e["conflict"]["outcome"] == "server");
                let restored = log.iter().any(|e| {
                    e["id"] == id
                        && e["action"] == "create"
                        && e["hlc"].as_str() > w["hlc"].as_str()
                });
                assert!(lost || restored, "the delete {w} was lost without a trace");
                continue;
            }
            let mine =
                mine.unwrap_or_else(|| panic!("no log entry for the acknowledged change {w}"));
            let version = mine["version"].as_i64().unwrap();
            let Some(data) = w.get("data").and_then(Value::as_object) else {
                continue;
            };
            for (field, value) in data {
                if row.get(field) == Some(value) {
                    continue;
                }
                let reported = mine["conflict"]["fields"][field]["outcome"]
                    .as_str()
                    .is_some_and(|o| o != "client");
                let overwritten = log.iter().any(|e| {
                    e["id"] == id
                        && e["version"].as_i64().unwrap() > version
                        && (e["action"] == "create"
                            || e["changed"]
                                .as_array()
                                .is_some_and(|c| c.iter().any(|f| f == field)))
                });
                assert!(
                    reported || overwritten,
                    "`{field}` of {w} was lost without a report or a later write"
                );
            }
        }
        check_conflicts_are_genuine(log);
        if config.delete_wins {
            match config.strategy {
                // The latest user action by HLC, whatever the order of arrival; a
                // change made after one it overwrote but stamped before it by a
                // client's clock counts at the HLC the log gave it (causal stamping).
                SyncStrategy::LastWriteWins => {
                    // The entry of each moved change: the fields it wrote moved with it
                    // (a refused change's report wrote none).
                    let moved: BTreeMap<(String, String), &Value> = log
                        .iter()
                        .filter(|e| e["origin_hlc"].is_string())
                        .map(|e| ((e["id"].to_string(), e["origin_hlc"].to_string()), e))
                        .collect();
                    self.check_reference(&rows, |w, field| {
                        let hlc: Hlc = w["hlc"].as_str().unwrap().parse().unwrap();
                        let key = (w["id"].to_string(), w["hlc"].to_string());
                        let stamped = moved.get(&key).filter(|e| {
                            e["action"] == "create"
                                || e["changed"]
                                    .as_array()
                                    .is_some_and(|c| c.iter().any(|f| f == field))
                        });
                        let at =
                            stamped.map_or(hlc, |e| e["hlc"].as_str().unwrap().parse().unwrap());
                        (at, 0)
                    })
                }
                // The last change to arrive (the first time it arrived).
                SyncStrategy::ClientWins => {
                    let arrived = &self.arrived;
                    self.check_reference(&rows, |w, _| {
                        let key = (w["id"].to_string(), w["hlc"].to_string());
                        (Hlc::new(0, 0, 0), arrived[&key])
                    })
                }
                _ => {}
            }
        }
        rows
    }

    /// A reference model: a row is gone iff someone deleted it, and every field holds
    /// the value of the change that sorts last by `order` (of the change and the field).
    fn check_reference<K: Ord + Copy + std::fmt::Debug>(
        &self,
        rows: &BTreeMap<String, Row>,
        order: impl Fn(&Value, &str) -> K,
    ) {
        // Per row: `None` once deleted, else per field the last change and its value.
        type Fields<'a, K> = BTreeMap<&'a str, (K, &'a Value)>;
        let mut expected: BTreeMap<&str, Option<Fields<'_, K>>> = BTreeMap::new();
        for w in &self.made {
            let id = w["id"].as_str().unwrap();
            match w["action"].as_str().unwrap() {
                "delete" => {
                    expected.insert(id, None);
                }
                _ => {
                    let Some(fields) = expected.entry(id).or_insert_with(|| Some(BTreeMap::new()))
                    else {
                        continue;
                    };
                    for (field, value) in w["data"].as_object().unwrap() {
                        let hlc = order(w, field);
                        let slot = fields.entry(field.as_str()).or_insert((hlc, value));
                        if hlc > slot.0 {
                            *slot = (hlc, value);
                        }
                    }
                }
            }
        }
        let live: Vec<&str> = rows.keys().map(String::as_str).collect();
        let want: Vec<&str> = expected
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(live, want, "the live rows are not the ones never deleted");
        for (id, fields) in expected {
            let Some(fields) = fields else { continue };
            for (field, (hlc, value)) in fields {
                assert_eq!(
                    rows[id].get(field),
                    Some(value),
                    "`{id}.{field}` should hold the value of the last change ({hlc:?})"
                );
            }
        }
    }
}

/// Every field a change lost to "the server" was changed, after the change's base, by
/// another client (or by the same client anonymously): a client's own earlier writes
/// never beat it.
fn check_conflicts_are_genuine(log: &[Value]) {
    for e in log {
        let c = &e["conflict"];
        if c["reason"] != "concurrent_update" {
            continue;
        }
        let base = c["client_version"].as_i64().unwrap_or(0);
        for (field, report) in c["fields"].as_object().unwrap() {
            let server_hlc = &report["server_hlc"];
            let writes = |s: &Value| {
                s["action"] == "create"
                    || s["changed"]
                        .as_array()
                        .is_some_and(|ch| ch.iter().any(|f| f == field))
            };
            // Writes of one client moved after the same earlier write share their HLC
            // (causal stamping): the one that wrote the field is among them.
            let sources: Vec<&Value> = log
                .iter()
                .filter(|s| {
                    s["id"] == c["id"]
                        && s["hlc"] == *server_hlc
                        && s["version"].as_i64().unwrap() > base
                        && s["version"].as_i64() < c["version"].as_i64()
                })
                .collect();
            assert!(
                !sources.is_empty(),
                "conflict {c} names no earlier write of `{field}`"
            );
            let source = sources
                .iter()
                .find(|s| writes(s))
                .unwrap_or_else(|| panic!("conflict {c}: {sources:?} did not write `{field}`"));
            if c["client_id"].is_string() {
                assert_ne!(
                    source["client_id"], c["client_id"],
                    "conflict {c} with its own client's write"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tests

/// Runs `seeds` (or only `RHTMX_SIM_SEED`) in `config` against the model.
async fn run_seeds(config: Config, seeds: std::ops::Range<u64>) {
    let seeds: Vec<u64> = match std::env::var("RHTMX_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RHTMX_SIM_SEED is a number")],
        Err(_) => seeds.collect(),
    };
    let mut changes = 0;
    for seed in seeds {
        let run = async {
            let mut sim = Sim::new(seed, config, Model::new(config));
            let steps = 100 + Rng::new(seed).below(150) as usize;
            sim.run(steps).await;
            sim.check().await;
            sim.made.len()
        };
        match std::panic::AssertUnwindSafe(run).catch_unwind().await {
            Ok(n) => changes += n,
            Err(_) => panic!(
                "simulation failed for seed {seed} ({config:?}); replay it with \
                 RHTMX_SIM_SEED={seed} cargo test --test simulation"
            ),
        }
    }
    assert!(changes > 0);
}

#[tokio::test]
async fn last_write_wins_with_delete_wins_matches_the_reference_model() {
    let config = Config {
        strategy: SyncStrategy::LastWriteWins,
        delete_wins: true,
        anonymous: false,
    };
    run_seeds(config, 0..1200).await;
}

#[tokio::test]
async fn client_wins_matches_the_order_of_arrival() {
    let config = Config {
        strategy: SyncStrategy::ClientWins,
        delete_wins: true,
        anonymous: false,
    };
    run_seeds(config, 10_000..10_400).await;
}

#[tokio::test]
async fn without_client_ids_replays_are_told_apart_by_their_hlc() {
    for strategy in [SyncStrategy::ClientWins, SyncStrategy::LastWriteWins] {
        let config = Config {
            strategy,
            delete_wins: true,
            anonymous: true,
        };
        run_seeds(config, 50_000..50_200).await;
    }
}

#[tokio::test]
async fn server_wins_converges_and_loses_nothing_silently() {
    let config = Config {
        strategy: SyncStrategy::ServerWins,
        delete_wins: true,
        anonymous: false,
    };
    run_seeds(config, 20_000..20_400).await;
}

#[tokio::test]
async fn custom_resolver_with_last_write_wins_deletes_converges() {
    let config = Config {
        strategy: SyncStrategy::Custom,
        delete_wins: false,
        anonymous: false,
    };
    run_seeds(config, 30_000..30_400).await;
}

#[tokio::test]
async fn last_write_wins_without_delete_wins_converges() {
    let config = Config {
        strategy: SyncStrategy::LastWriteWins,
        delete_wins: false,
        anonymous: false,
    };
    run_seeds(config, 40_000..40_400).await;
}

/// The same runs against the real engine over HTTP and SQLite: every answer, the whole
/// log and the final rows equal the model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_over_http_gives_the_models_every_answer() {
    engine_matches_the_model(false).await;
}

/// The same on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_on_postgres_gives_the_models_every_answer() {
    engine_matches_the_model(true).await;
}

async fn engine_matches_the_model(postgres: bool) {
    use SyncStrategy::*;
    let configs = [
        (LastWriteWins, true, false),
        (LastWriteWins, false, false),
        (ServerWins, true, false),
        (ClientWins, true, true),
        (Custom, false, false),
        (LastWriteWins, false, true),
    ];
    let seeds: Vec<u64> = match std::env::var("RHTMX_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RHTMX_SIM_SEED is a number")],
        Err(_) => (1..=12).collect(),
    };
    for seed in seeds {
        let (strategy, delete_wins, anonymous) = configs[seed as usize % configs.len()];
        let config = Config {
            strategy,
            delete_wins,
            anonymous,
        };
        let steps = 100 + Rng::new(seed).below(150) as usize;
        let mut model = Sim::new(seed, config, Model::new(config));
        model.run(steps).await;
        let model_rows = model.check().await;
        let mut real = Sim::new(seed, config, Engine::start(config, postgres).await);
        real.run(steps).await;
        let real_rows = real.check().await;
        assert!(model.made.len() > 5, "seed {seed}: too little happened");
        for (k, (m, r)) in model.transcript.iter().zip(&real.transcript).enumerate() {
            if let Some(diff) = first_difference(m, r) {
                panic!(
                    "seed {seed} ({config:?}): answer {k} differs between the model and the \
                     engine at {diff}; replay with RHTMX_SIM_SEED={seed}"
                );
            }
        }
        assert_eq!(model.transcript.len(), real.transcript.len(), "seed {seed}");
        assert_eq!(model_rows, real_rows, "seed {seed}");
    }
}

/// Where two JSON values first differ, as a path and both values.
fn first_difference(a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (p, q) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                first_difference(p, q).map(|d| format!(".{k}{d}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q).map(|d| format!("[{i}]{d}"))),
        _ if a == b => None,
        _ => Some(format!(": model {a} / engine {b}")),
    }
}
