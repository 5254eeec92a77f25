//! Section 3, fan-out: N concurrent event streams on loopback. The server is a child process;
//! the N clients are raw-TCP HTTP/1.1 readers (one tokio task each) in this process, so
//! the server's RSS is its own. Each write carries the moment it was sent in its title
//! (`fanA<ns>` for an app-route write, `fanP<ns>` for a push), and every client records
//! when that title reached it: write→event latency, measured from the moment the writer
//! sends its request, over all N × writes deliveries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::server::{self, Child, ServeOptions};
use crate::util::{self, Out, Row, Target};
use crate::Config;

pub const SECTION: &str = "3. fan-out";
const MARK: &[u8] = b"\"title\":\"fan";
/// At most this many connects in flight.
const CONNECTS_IN_FLIGHT: usize = 256;

/// Which path a write took.
#[derive(Clone, Copy)]
enum Mode {
    App = 0,
    Push = 1,
}

pub async fn run(config: &Config, out: &mut Out) {
    eprintln!("## {SECTION}");
    let sizes: [usize; 3] = if config.full {
        [1_000, 5_000, 10_000]
    } else {
        [100, 500, 2_000]
    };
    let writes = if config.full { 50 } else { 20 };
    if config.wants_part("fanout", "streams") {
        for n in sizes {
            one_size(n, writes, out).await;
        }
    }
    // `--only fanout:scoped` runs only this part.
    if config.wants_part("fanout", "scoped") {
        let scoped_sizes: &[usize] = if config.full {
            &[1_000, 10_000]
        } else {
            &[1_000]
        };
        for &n in scoped_sizes {
            scoped_vs_unscoped(n, writes, out).await;
        }
    }
}

/// Scoped streams next to unscoped ones: the same `n` streams and pushed writes, with
/// no scopes; with `Scope::tenant` and every stream in the rows' tenant (the cost of
/// judging alone); and with half the streams in another tenant (each change judged by
/// every stream, sent to half). Latency is over the deliveries; CPU is the server's,
/// per write.
async fn scoped_vs_unscoped(n: usize, writes: usize, out: &mut Out) {
    let size = format!("{n} clients");
    let mut results = Vec::new();
    for (scoped, half) in [(false, false), (true, false), (true, true)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = ServeOptions {
            scoped,
            ..ServeOptions::example()
        };
        let child = Child::spawn(&dir.path().join("app.db"), opts);
        let swarm = Swarm::connect_with(child.addr, n, |i| {
            let tenant = if half && i % 2 == 1 { "t2" } else { "t1" };
            format!(
                "GET /api/sync/events?entities=todos HTTP/1.1\r\nHost: {}\r\n\
                 Accept: text/event-stream\r\nx-tenant: {tenant}\r\n\r\n",
                child.addr
            )
        })
        .await;
        let receivers = if half { n.div_ceil(2) } else { n };
        let http = server::client(2);
        let mut jitter = util::Lcg::new(n as u64 + 7);
        let cpu_before = child.cpu_secs();
        for k in 0..writes {
            tokio::time::sleep(Duration::from_micros(2000 + jitter.below(10_000))).await;
            let title = format!("fanP{}", util::now_ns());
            let res = http
                .post(format!("{}/api/sync/todos", child.base))
                .header("content-type", "application/json")
                .header("x-tenant", "t1")
                .body(format!(
                    "{{\"changes\":[{{\"id\":\"{}\",\"action\":\"create\",\
                     \"data\":{{\"title\":\"{title}\",\"completed\":false}}}}]}}",
                    util::new_id()
                ))
                .send()
                .await
                .expect("push");
            assert!(res.status().is_success(), "push: {}", res.status());
            let _ = res.bytes().await;
            let want = (k + 1) * receivers;
            let deadline = Instant::now() + Duration::from_secs(10);
            while swarm.shared.received[Mode::Push as usize].load(Ordering::Relaxed) < want
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let cpu_ms = (child.cpu_secs() - cpu_before) * 1000.0 / writes as f64;
        let got = swarm.shared.received[Mode::Push as usize].load(Ordering::Relaxed);
        let mut latencies = swarm.stop().await;
        let l = &mut latencies[Mode::Push as usize];
        l.sort_unstable();
        let ms = |p: f64| util::percentile(l, p).map_or(f64::NAN, |us| us as f64 / 1000.0);
        let lost = (writes * receivers).saturating_sub(got);
        results.push((ms(50.0), ms(99.0), cpu_ms, lost));
    }
    let [(p50, p99, cpu, lost0), all, half] = results[..] else {
        unreachable!("three runs")
    };
    for ((sp50, sp99, scpu, lost), who) in [
        (all, "every stream in the rows' tenant"),
        (half, "half the streams in another tenant"),
    ] {
        let mut note = format!(
            "{writes} pushed writes to {n} streams; Scope::tenant, {who}; each change \
             judged per stream by two strings against keys read once"
        );
        if lost + lost0 > 0 {
            note.push_str(&format!("; {} NOT DELIVERED within 10 s", lost + lost0));
        }
        for (metric, scoped, unscoped, unit) in [
            ("write→event p50", sp50, p50, "ms"),
            ("write→event p99", sp99, p99, "ms"),
            ("server CPU per write", scpu, cpu, "ms CPU/write"),
        ] {
            out.push(
                Row::new(
                    SECTION,
                    &format!("scoped vs unscoped {metric} ({who})"),
                    size.clone(),
                )
                .value(scoped, unit)
                .cost_vs(unscoped)
                .target(Target::RatioAtMost(1.5), "≤ 1.5×")
                .note(note.clone()),
            );
        }
    }
}

async fn one_size(n: usize, writes: usize, out: &mut Out) {
    let size = format!("{n} clients");
    let opts = ServeOptions::example();

    // Baseline: the same server, a bare axum SSE route that never sends an event.
    let baseline_kb = {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Child::spawn(&dir.path().join("app.db"), opts);
        let (kb, swarm) = idle_rss(&child, "/bench/sse-baseline", n).await;
        swarm.stop().await;
        kb
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let child = Child::spawn(&dir.path().join("app.db"), opts);
    let (kb, swarm) = idle_rss(&child, "/api/sync/events?entities=todos", n).await;
    out.push(
        Row::new(SECTION, "server RSS per idle event stream", size.clone())
            .value(kb, "KB/conn")
            .cost_vs(baseline_kb)
            .target(Target::ValueAtMost(4.0), "≤ 4 KB")
            .note(format!(
                "VmRSS of the server before/after {n} connections; baseline: bare axum SSE \
                 route on the same server; Phoenix LiveView ~40 KB/view"
            )),
    );

    let http = server::client(2);
    let mut jitter = util::Lcg::new(n as u64);
    let mut missing = [0usize; 2];
    let mut round_trips: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for mode in [Mode::App, Mode::Push] {
        for k in 0..writes {
            tokio::time::sleep(Duration::from_micros(2000 + jitter.below(10_000))).await;
            let want = (k + 1) * n;
            let title = format!(
                "fan{}{}",
                if matches!(mode, Mode::App) { 'A' } else { 'P' },
                util::now_ns()
            );
            let id = util::new_id();
            let sent = Instant::now();
            let res = match mode {
                Mode::App => {
                    http.post(format!("{}/todos", child.base))
                        .form(&[("id", id.as_str()), ("title", title.as_str())])
                        .send()
                        .await
                }
                Mode::Push => {
                    http.post(format!("{}/api/sync/todos", child.base))
                        .header("content-type", "application/json")
                        .body(format!(
                            "{{\"changes\":[{{\"id\":\"{id}\",\"action\":\"create\",\
                             \"data\":{{\"title\":\"{title}\",\"completed\":false}}}}]}}"
                        ))
                        .send()
                        .await
                }
            };
            let res = res.expect("write");
            assert!(res.status().is_success(), "write: {}", res.status());
            let _ = res.bytes().await;
            round_trips[mode as usize].push(sent.elapsed().as_secs_f64() * 1000.0);
            let deadline = Instant::now() + Duration::from_secs(10);
            while swarm.shared.received[mode as usize].load(Ordering::Relaxed) < want {
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let got = swarm.shared.received[mode as usize].load(Ordering::Relaxed);
        missing[mode as usize] = (writes * n).saturating_sub(got);
    }
    let mut latencies = swarm.stop().await;
    drop(child);
    for (mode, label, poll) in [
        (Mode::App, "app-route write (POST /todos)", true),
        (Mode::Push, "push-API write", false),
    ] {
        let l = &mut latencies[mode as usize];
        l.sort_unstable();
        let ms = |p: f64| util::percentile(l, p).map_or(f64::NAN, |us| us as f64 / 1000.0);
        let (p50, p99, max) = (ms(50.0), ms(99.0), ms(100.0));
        let lost = missing[mode as usize];
        let rtt = util::median(&mut round_trips[mode as usize]);
        let mut note = format!(
            "{} deliveries ({writes} writes × {n}); max {max:.1} ms; includes the write's \
             HTTP round trip and fsync'd commit (median {rtt:.2} ms)",
            l.len()
        );
        if poll {
            note.push_str("; includes the broadcaster's 10 ms poll_interval");
        }
        if lost > 0 {
            note.push_str(&format!("; {lost} NOT DELIVERED within 10 s"));
        }
        out.push(
            Row::new(SECTION, &format!("write→event p50, {label}"), size.clone())
                .value(p50, "ms")
                .target(Target::ValueAtMost(5.0), "≤ 5 ms")
                .note(note.clone()),
        );
        out.push(
            Row::new(SECTION, &format!("write→event p99, {label}"), size.clone())
                .value(p99, "ms")
                .target(Target::ValueAtMost(20.0), "≤ 20 ms")
                .note(note),
        );
    }
}

/// Connects `n` idle streams to `path`; returns the server's RSS growth per stream in KB
/// and the connected swarm.
async fn idle_rss(child: &Child, path: &str, n: usize) -> (f64, Swarm) {
    // Warm the server (first request, first stream) before the "before" reading.
    let warm = Swarm::connect(child.addr, path, 4).await;
    warm.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = child.mem().rss_kb;
    let swarm = Swarm::connect(child.addr, path, n).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = child.mem().rss_kb;
    (after.saturating_sub(before) as f64 / n as f64, swarm)
}

struct Shared {
    ready: AtomicUsize,
    received: [AtomicUsize; 2],
}

/// N event-stream readers.
struct Swarm {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<[Vec<u32>; 2]>>,
}

impl Swarm {
    async fn connect(addr: SocketAddr, path: &str, n: usize) -> Swarm {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        Swarm::connect_with(addr, n, |_| request.clone()).await
    }

    /// `n` readers, the `i`-th sending `request(i)`.
    async fn connect_with(addr: SocketAddr, n: usize, request: impl Fn(usize) -> String) -> Swarm {
        let shared = Arc::new(Shared {
            ready: AtomicUsize::new(0),
            received: [AtomicUsize::new(0), AtomicUsize::new(0)],
        });
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
        let tasks = (0..n)
            .map(|i| {
                tokio::spawn(reader(
                    addr,
                    Arc::<str>::from(request(i)),
                    shared.clone(),
                    gate.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while shared.ready.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} event streams opened",
                shared.ready.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Swarm {
            shared,
            stop,
            tasks,
        }
    }

    /// Closes every stream; returns the latencies (µs) per mode.
    async fn stop(self) -> [Vec<u32>; 2] {
        let _ = self.stop.send(true);
        let mut all = [Vec::new(), Vec::new()];
        for t in self.tasks {
            if let Ok([a, p]) = t.await {
                all[0].extend(a);
                all[1].extend(p);
            }
        }
        all
    }
}

async fn reader(
    addr: SocketAddr,
    request: Arc<str>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> [Vec<u32>; 2] {
    let mut latencies = [Vec::new(), Vec::new()];
    let permit = gate.acquire_owned().await.expect("semaphore");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut permit = Some(permit);
    // The response head and the stream's first comment, until both are in.
    let mut head: Vec<u8> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = vec![0u8; 2048];
    loop {
        tokio::select! {
            read = stream.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = util::now_ns();
                buf.extend_from_slice(&chunk[..n]);
                if permit.is_some() {
                    head.extend_from_slice(&chunk[..n]);
                    assert!(
                        head.len() < 12 || head.starts_with(b"HTTP/1.1 200"),
                        "event stream refused: {}",
                        String::from_utf8_lossy(&head)
                    );
                    if find(&head, b": rhtmx-sync").is_some() || find(&head, b": baseline").is_some() {
                        permit = None;
                        head = Vec::new();
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
                scan(&mut buf, now, &mut latencies, &shared);
            }
            _ = stop.changed() => break,
        }
    }
    latencies
}

/// Records every complete `"title":"fan<A|P><ns>"` in `buf` and drops what was read.
fn scan(buf: &mut Vec<u8>, now: u64, latencies: &mut [Vec<u32>; 2], shared: &Shared) {
    let mut pos = 0;
    let mut keep_from = None;
    while let Some(i) = find(&buf[pos..], MARK) {
        let start = pos + i;
        let rest = &buf[start + MARK.len()..];
        let Some(end) = rest.iter().position(|&b| b == b'"') else {
            keep_from = Some(start);
            break;
        };
        let mode = match rest.first() {
            Some(b'A') => 0,
            _ => 1,
        };
        let sent: u64 = std::str::from_utf8(&rest[1..end])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(now);
        latencies[mode].push((now.saturating_sub(sent) / 1000) as u32);
        shared.received[mode].fetch_add(1, Ordering::Relaxed);
        pos = start + MARK.len() + end + 1;
    }
    let cut = keep_from.unwrap_or_else(|| pos.max(buf.len().saturating_sub(MARK.len() + 24)));
    buf.drain(..cut);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
