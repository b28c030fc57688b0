//! Writing trace files: events are encoded into an in-memory block that goes to the file in one
//! `write` when it is full or older than the flush interval, so a SIGKILL loses at most that
//! interval and a crash mid-write leaves at most one torn block at the end.

use super::codec::{put_bytes, put_varint, put_varint_field, zigzag};
use super::{
    flag, kind, nsfield, sysctls_kv, trailer, workload_field, Header, Summary, BLOCK_HEADER_LEN,
    MAX_BLOCK_LEN, SYNC, VERSION_MAJOR, VERSION_MINOR,
};
use crate::host::sysctls::Sysctls;
use crate::host::workload::Workload;
use crate::pipeline::event::{Body, Event, ExitReason, Refusal, Sock, Substate};
use std::collections::HashMap;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Longest time an event may wait in memory before it is written to the file.
    pub flush_interval: Duration,
    /// Target payload size of one block (a block is written once it reaches this).
    pub block_bytes: usize,
    /// Start a new file (FILE.1, FILE.2, …) before one would grow past this many bytes.
    pub max_size: Option<u64>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            flush_interval: Duration::from_secs(1),
            block_bytes: 64 << 10,
            max_size: None,
        }
    }
}

/// The smallest `max_size` accepted: a header and a few small blocks.
pub const MIN_MAX_SIZE: u64 = 4096;

/// `FILE` for part 0, `FILE.n` after.
pub fn part_path(base: &Path, part: u32) -> PathBuf {
    if part == 0 {
        base.to_path_buf()
    } else {
        let mut s = base.as_os_str().to_owned();
        s.push(format!(".{part}"));
        PathBuf::from(s)
    }
}

/// Indices of a socket's interned parts in the current block.
#[derive(Clone, Copy)]
struct SockIx {
    tw_high: u32,
    tw_low: u32,
    netns: u32,
    laddr: u32,
    raddr: u32,
}

pub struct Writer {
    base: PathBuf,
    opts: WriterOptions,
    /// Template for each part's header; `sysctls` grows as namespaces are added.
    header: Header,
    file: File,
    file_bytes: u64,
    file_blocks: u64,
    paths: Vec<PathBuf>,
    /// Block header space followed by the payload being built.
    block: Vec<u8>,
    block_opened: Option<Instant>,
    prev_ts: u64,
    addrs: HashMap<IpAddr, u32>,
    netns: HashMap<u32, u32>,
    comms: HashMap<String, u32>,
    /// Cgroup id → index in the block's workload table.
    workloads: HashMap<u64, u32>,
    tw_high: HashMap<u32, u32>,
    events: u64,
    total_bytes: u64,
    /// Of `total_bytes`, the file headers (one per part).
    header_bytes: u64,
}

/// Creates or truncates `path` readable by its owner only (it holds addresses and process
/// names).
pub fn create_private(path: &Path) -> io::Result<File> {
    // Something that exists and is not a regular file (`-o /dev/null`) is written to as it is:
    // changing a device's mode would break it for everyone else.
    let regular_or_new = std::fs::metadata(path).map_or(true, |m| m.is_file());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` only applies to a new file: an existing one keeps its bits unless set here.
    if regular_or_new {
        file.set_permissions(Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

impl Writer {
    /// Creates (or truncates) `path` with mode 0600 and writes the header.
    pub fn create(path: &Path, header: &Header, opts: WriterOptions) -> io::Result<Writer> {
        let mut opts = opts;
        if let Some(max) = opts.max_size {
            if max < MIN_MAX_SIZE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the maximum file size must be at least {MIN_MAX_SIZE} bytes"),
                ));
            }
            // Keep several blocks per part, so parts stay close to the limit.
            opts.block_bytes = opts.block_bytes.min((max / 8) as usize);
        }
        opts.block_bytes = opts.block_bytes.clamp(256, (MAX_BLOCK_LEN / 2) as usize);
        let mut header = header.clone();
        header.part = 0;
        header.version.major = VERSION_MAJOR;
        header.version.minor = VERSION_MINOR;
        let h = header.encode();
        if let Some(max) = opts.max_size {
            // Each part repeats the header: it must leave room for events.
            if (h.len() as u64) * 2 > max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the maximum file size must be at least twice the header ({} bytes)",
                        h.len()
                    ),
                ));
            }
        }
        let mut file = create_private(path)?;
        file.write_all(&h)?;
        let mut block = Vec::with_capacity(opts.block_bytes + 1024);
        block.resize(BLOCK_HEADER_LEN, 0);
        Ok(Writer {
            base: path.to_path_buf(),
            opts,
            header,
            file,
            file_bytes: h.len() as u64,
            file_blocks: 0,
            paths: vec![path.to_path_buf()],
            block,
            block_opened: None,
            prev_ts: 0,
            addrs: HashMap::new(),
            netns: HashMap::new(),
            comms: HashMap::new(),
            workloads: HashMap::new(),
            tw_high: HashMap::new(),
            events: 0,
            total_bytes: h.len() as u64,
            header_bytes: h.len() as u64,
        })
    }

    /// Files written so far, in order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Bytes in the files plus the block still in memory.
    pub fn bytes(&self) -> u64 {
        self.total_bytes + self.payload_len() as u64
    }

    /// Bytes of blocks (events and their framing), without the file headers.
    pub fn block_bytes(&self) -> u64 {
        self.bytes() - self.header_bytes
    }

    fn payload_len(&self) -> usize {
        self.block.len() - BLOCK_HEADER_LEN
    }

    /// Writes the pending block if its oldest record has waited `flush_interval`.
    pub fn maybe_flush(&mut self) -> io::Result<()> {
        match self.block_opened {
            Some(t) if t.elapsed() >= self.opts.flush_interval => self.flush(),
            _ => Ok(()),
        }
    }

    /// Writes the pending block now.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.payload_len() == 0 {
            return Ok(());
        }
        let len = self.payload_len() as u32;
        self.block[..8].copy_from_slice(&SYNC);
        self.block[8..12].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&len.to_le_bytes()),
            &self.block[BLOCK_HEADER_LEN..],
        );
        self.block[12..16].copy_from_slice(&crc.to_le_bytes());
        if let Some(max) = self.opts.max_size {
            if self.file_blocks > 0 && self.file_bytes + self.block.len() as u64 > max {
                self.rotate()?;
            }
        }
        // Reset the block state first: after a failed write (full disk) the next block must
        // still be self-contained.
        let result = self.file.write_all(&self.block);
        let n = self.block.len() as u64;
        self.block.truncate(BLOCK_HEADER_LEN);
        self.block_opened = None;
        self.prev_ts = 0;
        self.addrs.clear();
        self.netns.clear();
        self.comms.clear();
        self.workloads.clear();
        self.tw_high.clear();
        result?;
        self.file_bytes += n;
        self.total_bytes += n;
        self.file_blocks += 1;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let part = self.paths.len() as u32;
        let path = part_path(&self.base, part);
        let mut file = create_private(&path)?;
        self.header.part = part;
        let h = self.header.encode();
        file.write_all(&h)?;
        let old = std::mem::replace(&mut self.file, file);
        // Best effort: the old part is complete; make it durable before moving on.
        let _ = old.sync_data();
        self.paths.push(path);
        self.file_bytes = h.len() as u64;
        self.total_bytes += h.len() as u64;
        self.header_bytes += h.len() as u64;
        self.file_blocks = 0;
        Ok(())
    }

    /// Ends the recording: writes the summary, the last block, and syncs the file. Returns the
    /// files written.
    pub fn finish(mut self, summary: &Summary) -> io::Result<Vec<PathBuf>> {
        let mut s = *summary;
        s.events = self.events;
        s.parts = self.paths.len() as u64;
        let mut body = Vec::new();
        s.encode(&mut body);
        self.record_bytes(kind::SUMMARY, &body);
        self.flush()?;
        self.file.sync_data()?;
        Ok(self.paths)
    }

    fn open_block(&mut self) {
        if self.block_opened.is_none() {
            self.block_opened = Some(Instant::now());
        }
    }

    /// An untimed record with a ready body.
    fn record_bytes(&mut self, kind: u64, body: &[u8]) {
        self.open_block();
        put_varint(&mut self.block, kind << 1);
        put_bytes(&mut self.block, body);
    }

    fn after_record(&mut self) -> io::Result<()> {
        if self.payload_len() >= self.opts.block_bytes {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Writes the tag and a one-byte length placeholder; returns where the body starts.
    #[inline]
    fn begin(&mut self, kind: u64, timed: bool) -> usize {
        self.open_block();
        put_varint(&mut self.block, kind << 1 | timed as u64);
        self.block.push(0);
        self.block.len()
    }

    /// Patches the body length (moving the body when it needs a longer varint).
    #[inline]
    fn end(&mut self, start: usize) {
        let len = self.block.len() - start;
        if len < 0x80 {
            self.block[start - 1] = len as u8;
        } else {
            let mut v = Vec::with_capacity(10);
            put_varint(&mut v, len as u64);
            self.block.splice(start - 1..start, v);
        }
    }

    fn intern_addr(&mut self, a: &IpAddr) -> u32 {
        if let Some(&i) = self.addrs.get(a) {
            return i;
        }
        let i = self.addrs.len() as u32;
        self.addrs.insert(*a, i);
        let s = self.begin(kind::DEF_ADDR, false);
        match a {
            IpAddr::V4(v4) => self.block.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => self.block.extend_from_slice(&v6.octets()),
        }
        self.end(s);
        i
    }

    fn intern_netns(&mut self, ns: u32) -> u32 {
        if let Some(&i) = self.netns.get(&ns) {
            return i;
        }
        let i = self.netns.len() as u32;
        self.netns.insert(ns, i);
        let s = self.begin(kind::DEF_NETNS, false);
        put_varint(&mut self.block, ns as u64);
        self.end(s);
        i
    }

    fn intern_comm(&mut self, comm: &str) -> u32 {
        if let Some(&i) = self.comms.get(comm) {
            return i;
        }
        let i = self.comms.len() as u32;
        self.comms.insert(comm.to_string(), i);
        let s = self.begin(kind::DEF_COMM, false);
        self.block.extend_from_slice(comm.as_bytes());
        self.end(s);
        i
    }

    fn intern_workload(&mut self, w: &Workload) -> u32 {
        if let Some(&i) = self.workloads.get(&w.cgroup_id) {
            return i;
        }
        let i = self.workloads.len() as u32;
        self.workloads.insert(w.cgroup_id, i);
        let s = self.begin(kind::DEF_WORKLOAD, false);
        put_varint(&mut self.block, w.cgroup_id);
        let fields = [
            (workload_field::PATH, w.path.as_deref()),
            (workload_field::POD, w.pod.as_deref()),
        ];
        for (tag, v) in fields {
            if let Some(v) = v {
                put_varint(&mut self.block, tag);
                put_bytes(&mut self.block, v.as_bytes());
            }
        }
        self.end(s);
        i
    }

    fn intern_tw_high(&mut self, high: u32) -> u32 {
        if let Some(&i) = self.tw_high.get(&high) {
            return i;
        }
        let i = self.tw_high.len() as u32;
        self.tw_high.insert(high, i);
        let s = self.begin(kind::DEF_TW_HIGH, false);
        self.block.extend_from_slice(&high.to_le_bytes());
        self.end(s);
        i
    }

    fn intern_sock(&mut self, s: &Sock) -> SockIx {
        SockIx {
            tw_high: self.intern_tw_high((s.tw >> 32) as u32),
            tw_low: s.tw as u32,
            netns: self.intern_netns(s.netns),
            laddr: self.intern_addr(&s.laddr),
            raddr: self.intern_addr(&s.raddr),
        }
    }

    #[inline]
    fn put_sock(&mut self, ix: SockIx, s: &Sock) {
        let b = &mut self.block;
        put_varint(b, ix.tw_high as u64);
        b.extend_from_slice(&ix.tw_low.to_le_bytes());
        put_varint(b, ix.netns as u64);
        put_varint(b, ix.laddr as u64);
        b.extend_from_slice(&s.lport.to_le_bytes());
        put_varint(b, ix.raddr as u64);
        b.extend_from_slice(&s.rport.to_le_bytes());
    }

    fn put_substate(&mut self, s: Substate) {
        match s {
            Substate::TimeWait => self.block.push(0),
            Substate::FinWait2 => self.block.push(1),
            Substate::Other(v) => {
                self.block.push(2);
                self.block.push(v);
            }
        }
    }

    /// Appends one event; writes the block when it is full.
    pub fn write(&mut self, e: &Event) -> io::Result<()> {
        // Definitions first: they are records of their own and must precede their first use.
        let six = e.sock().map(|s| (self.intern_sock(s), s));
        let tix = e.task().map(|t| (t.pid, self.intern_comm(&t.comm)));
        let wix = e.workload.as_ref().map(|w| self.intern_workload(w));

        let k = match &e.body {
            Body::Enter { .. } => kind::ENTER,
            Body::Promote { .. } => kind::PROMOTE,
            Body::Exit { .. } => kind::EXIT,
            Body::Overflow { .. } => kind::OVERFLOW,
            Body::Abort { .. } => kind::ABORT,
            Body::ConnectFail { .. } => kind::CONNECT_FAIL,
            Body::PawsReject { .. } => kind::PAWS_REJECT,
            Body::BindFail { .. } => kind::BIND_FAIL,
            Body::BoundConnect { .. } => kind::BOUND_CONNECT,
            Body::Lost { .. } => kind::LOST,
            Body::Netns { netns, sysctls } => {
                // Later parts' headers carry every namespace seen so far, so that each part
                // can be read alone.
                self.header
                    .sysctls
                    .insert(*netns as u64, sysctls_kv(sysctls));
                kind::NETNS
            }
        };
        let start = self.begin(k, true);
        let delta = e.ts_ns.wrapping_sub(self.prev_ts) as i64;
        put_varint(&mut self.block, zigzag(delta));
        self.prev_ts = e.ts_ns;
        if let Some((ix, s)) = six {
            self.put_sock(ix, s);
        }
        let task_flag = if tix.is_some() { flag::TASK } else { 0 };
        self.put_body(&e.body, task_flag);
        if let Some((pid, comm)) = tix {
            put_varint(&mut self.block, pid as u64);
            put_varint(&mut self.block, comm as u64);
        }
        // Fields added in minor 1 go last: older readers ignore trailing bytes.
        if let Body::ConnectFail {
            candidates: Some(n),
            ..
        } = &e.body
        {
            put_varint(&mut self.block, *n as u64);
        }
        // Minor 3: the workload, after everything else.
        if let Some(w) = wix {
            put_varint_field(&mut self.block, trailer::WORKLOAD, w as u64);
        }
        self.end(start);
        self.events += 1;
        self.after_record()
    }

    /// The fields of each kind after the timestamp and the socket (docs/trace-format.md).
    fn put_body(&mut self, body: &Body, task_flag: u8) {
        use flag::{AGE, CANDIDATES, LIFETIME, PORTS, SNAPSHOT};
        match body {
            Body::Enter {
                substate,
                timeout_ms,
                snapshot,
                age_ms,
                ..
            } => {
                self.put_substate(*substate);
                put_varint(&mut self.block, *timeout_ms);
                let flags = task_flag
                    | if *snapshot { SNAPSHOT } else { 0 }
                    | if age_ms.is_some() { AGE } else { 0 };
                self.block.push(flags);
                if let Some(a) = age_ms {
                    put_varint(&mut self.block, *a);
                }
            }
            Body::Promote {
                timeout_ms, age_ms, ..
            } => {
                put_varint(&mut self.block, *timeout_ms);
                self.block.push(if age_ms.is_some() { AGE } else { 0 });
                if let Some(a) = age_ms {
                    put_varint(&mut self.block, *a);
                }
            }
            Body::Exit {
                substate,
                reason,
                lifetime_ms,
                ..
            } => {
                self.put_substate(*substate);
                self.block.push(reason_code(*reason));
                self.block
                    .push(task_flag | if lifetime_ms.is_some() { LIFETIME } else { 0 });
                if let Some(l) = lifetime_ms {
                    put_varint(&mut self.block, *l);
                }
            }
            Body::Overflow { .. } | Body::PawsReject { .. } => {}
            Body::Abort { .. } => self.block.push(task_flag),
            Body::ConnectFail {
                errno,
                refusal,
                timewait,
                candidates,
                ..
            } => {
                put_varint(&mut self.block, zigzag(*errno as i64));
                self.block.push(refusal_code(*refusal));
                put_varint(&mut self.block, *timewait as u64);
                self.block
                    .push(task_flag | if candidates.is_some() { CANDIDATES } else { 0 });
            }
            Body::Lost { count } => put_varint(&mut self.block, *count),
            Body::BindFail {
                netns,
                family,
                errno,
                timewait,
                ports,
                ..
            } => {
                put_varint(&mut self.block, *netns as u64);
                self.block.push(*family);
                put_varint(&mut self.block, zigzag(*errno as i64));
                put_varint(&mut self.block, *timewait as u64);
                self.block
                    .push(task_flag | if ports.is_some() { PORTS } else { 0 });
                if let Some(p) = ports {
                    put_varint(&mut self.block, *p as u64);
                }
            }
            Body::BoundConnect { .. } => self.block.push(task_flag),
            Body::Netns { netns, sysctls } => {
                put_varint(&mut self.block, *netns as u64);
                put_netns_fields(&mut self.block, sysctls);
            }
        }
    }
}

/// The present sysctls as (tag, value) varint pairs: absent ones are left out, and a reader
/// skips tags it does not know.
fn put_netns_fields(b: &mut Vec<u8>, s: &Sysctls) {
    let mut put = |tag: u64, v: Option<u64>| {
        if let Some(v) = v {
            put_varint(b, tag);
            put_varint(b, v);
        }
    };
    put(nsfield::TW_REUSE, s.tw_reuse.map(u64::from));
    put(
        nsfield::TW_REUSE_DELAY_MS,
        s.tw_reuse_delay_ms.map(u64::from),
    );
    put(nsfield::MAX_TW_BUCKETS, s.max_tw_buckets);
    put(nsfield::TIMESTAMPS, s.timestamps.map(u64::from));
    put(nsfield::FIN_TIMEOUT_S, s.fin_timeout_s.map(u64::from));
    put(nsfield::RFC1337, s.rfc1337.map(u64::from));
    put(nsfield::PORT_RANGE_LO, s.port_range.map(|r| r.0 as u64));
    put(nsfield::PORT_RANGE_HI, s.port_range.map(|r| r.1 as u64));
}

/// Stable on-disk codes: never renumber, only append.
pub(crate) fn reason_code(r: ExitReason) -> u8 {
    match r {
        ExitReason::Expired => 0,
        ExitReason::Reused => 2,
        ExitReason::Syn => 3,
        ExitReason::Rst => 4,
        ExitReason::Purged => 5,
        ExitReason::Unknown => 6,
    }
}

pub(crate) fn refusal_code(r: Refusal) -> u8 {
    match r {
        Refusal::ReuseOff => 0,
        Refusal::LoopbackOnly => 1,
        Refusal::NoTimestamps => 2,
        Refusal::TooYoung => 3,
        Refusal::FinWait2 => 4,
        Refusal::NoTimewait => 5,
        Refusal::Unknown => 6,
    }
}
