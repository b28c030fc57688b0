//! `twtrace serve`: the tracer, headless, with Prometheus metrics on `/metrics` and a liveness
//! answer on `/healthz`.
//!
//! Threads: the tracer's own (poll, aggregate, and once a second render the exposition into
//! an immutable snapshot), one that maps namespaces to cgroups every half minute, and the
//! HTTP server (a single-threaded tokio runtime on the main thread). A scrape only clones the
//! `Arc` of the latest snapshot and writes it: the tracer never waits for a client, and
//! however many clients scrape, the snapshot is rendered once.
//!
//! The HTTP server is a small hand-written HTTP/1.1 loop over tokio with `httparse` for the
//! request head, rather than hyper: it has two GET routes and accepts no bodies, and every
//! bound a privileged daemon needs (concurrent connections, head size, head and write
//! timeouts, requests per connection) is explicit here in a page of code, where hyper would
//! bring three more crates and still leave the connection limit and idle timeout to us.

use super::args::{parse_count, TraceArgs};
use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use twtrace::analysis::aggregate::Aggregator;
use twtrace::frontend::metrics::{self, Health, Metrics, NetnsOwner, Options};
use twtrace::kernel::snapshot::NetnsCensus;
use twtrace::kernel::sysinfo;
use twtrace::pipeline::event::Event;
use twtrace::pipeline::session::{self, Flow, Session, Sink};
use twtrace::pipeline::tracer::Tracer;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where to serve /metrics and /healthz. Loopback by default; on any other address anyone
    /// who reaches it reads peer addresses and cgroup paths.
    #[arg(
        long,
        default_value = "127.0.0.1:9573",
        value_name = "ADDR:PORT",
        allow_negative_numbers = true
    )]
    pub listen: SocketAddr,
    /// Destinations that get a port-pressure series (the fullest ones), and workloads that get
    /// the workload series (the busiest): bounds the labels. 0 leaves both out.
    #[arg(long, default_value = "20", value_name = "N", allow_negative_numbers = true,
          value_parser = parse_count(0, MAX_PEER_LABELS, "a number of destinations"))]
    pub peer_labels: usize,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// The most destinations with a port-pressure series: each is a series per scrape.
const MAX_PEER_LABELS: usize = 10_000;
/// How often the exposition is rendered (scrapes in between get the same snapshot).
const REFRESH: Duration = Duration::from_secs(1);
/// How often the kernel's census is taken again.
const CENSUS_EVERY: Duration = Duration::from_secs(5);
/// How often namespaces are mapped to cgroups.
const OWNERS_EVERY: Duration = Duration::from_secs(30);
/// `/healthz` fails when the latest snapshot is older than this.
const STALE_AFTER: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNS: usize = 64;
/// Largest request head accepted.
const HEAD_MAX: usize = 8 * 1024;
/// A whole request head (or the idle time before it, on a kept-alive connection) must arrive
/// within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A response must be written within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per connection before it is closed (the client reconnects).
const MAX_REQUESTS: usize = 1000;

/// One rendered exposition.
#[derive(Debug)]
struct Published {
    openmetrics: Bytes,
    text: Bytes,
    at: Instant,
}

/// What the tracer thread and the HTTP server share: swapped, never held across I/O.
#[derive(Debug, Default)]
struct Shared {
    latest: Mutex<Option<Arc<Published>>>,
    /// Cleared when the tracer thread ends, however it ends.
    tracer_alive: AtomicBool,
}

impl Shared {
    fn latest(&self) -> Option<Arc<Published>> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, p: Published) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(p));
    }
}

/// Clears `tracer_alive` when dropped (the thread's end, panics included).
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.tracer_alive.store(false, Ordering::Relaxed);
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    // Bind first: a taken port is reported before the kernel programs are loaded.
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = session::stop_on_signals()?;
    let deadline = args.trace.duration.map(|d| Instant::now() + d);
    let shared = Arc::new(Shared::default());
    let owners: Arc<Mutex<Arc<HashMap<u64, NetnsOwner>>>> = Arc::default();

    let owners_thread = {
        let (owners, stop) = (owners.clone(), stop.clone());
        std::thread::Builder::new()
            .name("netns-owners".into())
            .spawn(move || owners_loop(&owners, &stop))?
    };

    // The tracer lives on its own thread; it says when it is attached and has published its
    // first snapshot.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let tracer_thread = {
        let (shared, owners, stop) = (shared.clone(), owners.clone(), stop.clone());
        let mut opts = args.trace.session();
        opts.poll_every = Duration::from_millis(100);
        opts.census_every = Some(CENSUS_EVERY);
        let peer_labels = args.peer_labels;
        shared.tracer_alive.store(true, Ordering::Relaxed);
        std::thread::Builder::new()
            .name("tracer".into())
            .spawn(move || -> Result<String> {
                let _alive = AliveGuard(shared.clone());
                let mut session = match Session::start(opts, stop) {
                    Ok(s) => s,
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready_tx.send(Err(e));
                        anyhow::bail!(msg);
                    }
                };
                let mut sink = Exposition::new(session.tracer(), peer_labels, &shared, &owners);
                sink.ready = Some(ready_tx);
                session.run(&mut [&mut sink])?;
                Ok(session.summary_line())
            })?
    };
    let ready = ready_rx.recv().unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "the tracer thread died before it was ready"
        ))
    });
    if let Err(e) = ready {
        stop.store(true, Ordering::Relaxed);
        let _ = owners_thread.join();
        let _ = tracer_thread.join();
        return Err(e);
    }
    eprintln!("twtrace serve: listening on http://{addr} (/metrics, /healthz)");
    if !addr.ip().is_loopback() {
        eprintln!(
            "twtrace serve: note: {addr} is not a loopback address: whoever reaches it reads \
             peer addresses and cgroup paths"
        );
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let served = rt.block_on(serve_http(listener, shared.clone(), stop.clone(), deadline));
    // Connections still open are dropped with the runtime.
    drop(rt);
    stop.store(true, Ordering::Relaxed);
    let summary = tracer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the tracer thread panicked"))?;
    let _ = owners_thread.join();
    served?;
    let summary = summary?;
    if !args.trace.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}

/// The metrics as a session sink: aggregates, and renders the exposition every [`REFRESH`].
struct Exposition<'a> {
    agg: Aggregator,
    metrics: Metrics,
    hooks: Vec<(String, bool)>,
    shared: &'a Shared,
    owners: &'a Mutex<Arc<HashMap<u64, NetnsOwner>>>,
    /// Told once the first snapshot is published.
    ready: Option<std::sync::mpsc::Sender<Result<()>>>,
    last_render: Option<Instant>,
}

impl<'a> Exposition<'a> {
    fn new(
        tracer: &Tracer,
        peer_labels: usize,
        shared: &'a Shared,
        owners: &'a Mutex<Arc<HashMap<u64, NetnsOwner>>>,
    ) -> Self {
        Exposition {
            agg: Aggregator::default(),
            metrics: Metrics::new(Options { peer_labels }),
            hooks: tracer.features().hook_table(),
            shared,
            owners,
            ready: None,
            last_render: None,
        }
    }
}

impl Sink for Exposition<'_> {
    fn on_events(&mut self, events: &[Event]) -> Result<Flow> {
        for e in events {
            self.agg.observe(e);
            self.metrics.observe(e);
        }
        Ok(Flow::Continue)
    }

    fn on_census(&mut self, at_ns: u64, census: &[NetnsCensus]) {
        self.agg.set_census(at_ns, census);
    }

    fn on_census_unavailable(&mut self, why: &str) {
        // No iterator on this kernel: the gauges come from events only.
        eprintln!("twtrace serve: warning: no state census ({why}); TIME_WAIT counts come from events only");
    }

    fn tick(&mut self, session: &Session) -> Result<Flow> {
        if self.last_render.is_some_and(|t| t.elapsed() < REFRESH) {
            return Ok(Flow::Continue);
        }
        self.last_render = Some(Instant::now());
        self.agg.advance(sysinfo::monotonic_ns());
        let tracer = session.tracer();
        let health = Health {
            hooks: self.hooks.clone(),
            lost: tracer.lost_total(),
            decode_errors: tracer.decode_errors,
            read_errors: tracer.read_errors(),
            map_errors: tracer.map_errors(),
            skipped_runs: tracer.skipped_runs().unwrap_or(0),
            overflow_check: tracer.overflow_check(),
        };
        let owners = self
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let r = self.metrics.render(&self.agg, &health, &owners);
        self.shared.publish(Published {
            openmetrics: Bytes::from(r.openmetrics),
            text: Bytes::from(r.text),
            at: Instant::now(),
        });
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(Ok(()));
        }
        Ok(Flow::Continue)
    }
}

/// Maps namespaces to a task and cgroup every [`OWNERS_EVERY`] until `stop`.
fn owners_loop(owners: &Mutex<Arc<HashMap<u64, NetnsOwner>>>, stop: &AtomicBool) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let found = Arc::new(metrics::netns_owners(Path::new("/proc")));
            *owners.lock().unwrap_or_else(|p| p.into_inner()) = found;
            next = Instant::now() + OWNERS_EVERY;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Accepts until `stop`, the deadline, or the tracer's end.
async fn serve_http(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    deadline: Option<Instant>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    let stopped = {
        let shared = shared.clone();
        async move {
            while !stop.load(Ordering::Relaxed)
                && deadline.is_none_or(|d| Instant::now() < d)
                && shared.tracer_alive.load(Ordering::Relaxed)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    tokio::pin!(stopped);
    loop {
        let next = async {
            // A slot first: at the limit, new clients wait in the kernel's backlog.
            let permit = slots.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        tokio::select! {
            _ = &mut stopped => break,
            (permit, accepted) = next => {
                let Ok(permit) = permit else { break };
                match accepted {
                    Ok((sock, _)) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            connection(sock, &shared).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        log::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Serves requests on one connection until the client closes, asks to close, breaks a bound,
/// or [`MAX_REQUESTS`] is reached.
async fn connection(mut sock: TcpStream, shared: &Shared) {
    let _ = sock.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    for n in 1..=MAX_REQUESTS {
        let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut sock, &mut buf)).await {
            Ok(Ok(h)) => h,
            _ => return,
        };
        let (resp, used, keep, head_only) = match head {
            Head::Complete(used) => match parse_request(&buf[..used]) {
                Ok(req) => (
                    route(&req, shared),
                    used,
                    // The last request allowed says so, rather than leaving the client to
                    // find a closed socket under its next request.
                    req.keep_alive && !req.has_body && n < MAX_REQUESTS,
                    req.method == "HEAD",
                ),
                Err(resp) => (resp, used, false, false),
            },
            Head::TooLarge => (
                Response::error(431, "request head too large"),
                0,
                false,
                false,
            ),
            Head::Eof => return,
        };
        if write_response(&mut sock, &resp, keep, head_only)
            .await
            .is_err()
            || !keep
        {
            return;
        }
        buf.drain(..used);
    }
}

enum Head {
    /// A complete head of this many bytes is at the start of the buffer.
    Complete(usize),
    TooLarge,
    Eof,
}

/// Reads until the buffer holds a complete request head (pipelined bytes after it stay).
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Head> {
    loop {
        if let Some(end) = find_head_end(buf) {
            return Ok(Head::Complete(end));
        }
        if buf.len() >= HEAD_MAX {
            return Ok(Head::TooLarge);
        }
        let mut chunk = [0u8; 2048];
        let want = chunk.len().min(HEAD_MAX - buf.len());
        let n = sock.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(Head::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The end of the first `\r\n\r\n` (or bare `\n\n`), if any.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a request asks, as far as this server cares.
#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    path: String,
    openmetrics: bool,
    keep_alive: bool,
    /// It announced a body, which this server does not read: the connection closes after.
    has_body: bool,
}

fn parse_request(head: &[u8]) -> std::result::Result<Request, Response> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Response::error(400, "incomplete request")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Response::error(431, "too many headers"))
        }
        Err(e) => return Err(Response::error(400, &format!("bad request: {e}"))),
    }
    let header = |name: &str| -> Option<String> {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    let connection = header("connection").unwrap_or_default();
    let keep_alive = match req.version {
        Some(1) => !connection.contains("close"),
        _ => connection.contains("keep-alive"),
    };
    let has_body = header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|v| v.trim() != "0");
    Ok(Request {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("/").to_string(),
        openmetrics: header("accept").is_some_and(|a| a.contains("application/openmetrics-text")),
        keep_alive,
        has_body,
    })
}

#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: Bytes,
}

impl Response {
    fn text(status: u16, body: impl Into<Bytes>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn error(status: u16, msg: &str) -> Response {
        Response::text(status, format!("{msg}\n"))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn route(req: &Request, shared: &Shared) -> Response {
    let alive = shared.tracer_alive.load(Ordering::Relaxed);
    respond(req, shared.latest().as_deref(), alive)
}

/// The response to a request, given the latest snapshot and whether the tracer runs.
fn respond(req: &Request, latest: Option<&Published>, tracer_alive: bool) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::error(405, "only GET and HEAD");
    }
    let path = req.path.split('?').next().unwrap_or("");
    match path {
        "/metrics" => match latest {
            Some(p) if req.openmetrics => Response {
                status: 200,
                content_type: metrics::OPENMETRICS_CONTENT_TYPE,
                body: p.openmetrics.clone(),
            },
            Some(p) => Response {
                status: 200,
                content_type: metrics::TEXT_CONTENT_TYPE,
                body: p.text.clone(),
            },
            None => Response::error(503, "no snapshot yet"),
        },
        "/healthz" => match latest {
            _ if !tracer_alive => Response::error(503, "the tracer has stopped"),
            None => Response::error(503, "no snapshot yet"),
            Some(p) if p.at.elapsed() > STALE_AFTER => Response::error(
                503,
                &format!("the latest snapshot is {:.0?} old", p.at.elapsed()),
            ),
            Some(_) => Response::text(200, "ok\n"),
        },
        "/" => Response::text(200, "twtrace serve: /metrics (Prometheus), /healthz\n"),
        _ => Response::error(404, "not found: try /metrics"),
    }
}

async fn write_response(
    sock: &mut TcpStream,
    resp: &Response,
    keep_alive: bool,
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n{}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        if keep_alive { "keep-alive" } else { "close" },
        if resp.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        },
    );
    let write = async {
        sock.write_all(head.as_bytes()).await?;
        if !head_only {
            sock.write_all(&resp.body).await?;
        }
        sock.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(age: Duration) -> Published {
        Published {
            openmetrics: Bytes::from_static(b"om\n# EOF\n"),
            text: Bytes::from_static(b"text\n"),
            at: Instant::now() - age,
        }
    }

    fn req(raw: &str) -> Request {
        parse_request(raw.as_bytes()).unwrap()
    }

    #[test]
    fn requests_are_parsed() {
        let r = req("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert!(r.openmetrics && r.keep_alive && !r.has_body);
        let r = req("GET /metrics HTTP/1.0\r\n\r\n");
        assert!(!r.openmetrics && !r.keep_alive);
        let r = req("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(!r.keep_alive);
        let r = req("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert!(r.has_body);
        let r = req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(r.has_body);
        assert_eq!(
            parse_request(b"\x00\x01 garbage\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        let many: String = (0..60).map(|i| format!("X-{i}: y\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_request(raw.as_bytes()).unwrap_err().status, 431);
    }

    #[test]
    fn head_end_is_found_with_pipelined_bytes_after_it() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nGET"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nX"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn routes() {
        let fresh = published(Duration::ZERO);
        let get = |path: &str, om: bool| Request {
            method: "GET".into(),
            path: path.into(),
            openmetrics: om,
            keep_alive: true,
            has_body: false,
        };
        let r = respond(&get("/metrics", true), Some(&fresh), true);
        assert_eq!(
            (r.status, r.content_type),
            (200, metrics::OPENMETRICS_CONTENT_TYPE)
        );
        assert_eq!(&r.body[..], b"om\n# EOF\n");
        let r = respond(&get("/metrics?x=1", false), Some(&fresh), true);
        assert_eq!(
            (r.status, r.content_type),
            (200, metrics::TEXT_CONTENT_TYPE)
        );
        assert_eq!(&r.body[..], b"text\n");
        assert_eq!(respond(&get("/metrics", false), None, true).status, 503);
        assert_eq!(
            respond(&get("/healthz", false), Some(&fresh), true).status,
            200
        );
        assert_eq!(
            respond(&get("/healthz", false), Some(&fresh), false).status,
            503
        );
        assert_eq!(respond(&get("/healthz", false), None, true).status, 503);
        let stale = published(STALE_AFTER + Duration::from_secs(1));
        assert_eq!(
            respond(&get("/healthz", false), Some(&stale), true).status,
            503
        );
        assert_eq!(
            respond(&get("/nope", false), Some(&fresh), true).status,
            404
        );
        let post = Request {
            method: "POST".into(),
            ..get("/metrics", false)
        };
        assert_eq!(respond(&post, Some(&fresh), true).status, 405);
    }
}
