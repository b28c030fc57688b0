//! Reading trace files: streaming, block by block, with every damaged region reported as a
//! [`Damage`] item in the stream and reading resumed at the next whole block.
//!
//! Nothing here trusts the input: lengths are bounded before allocating, indices are checked,
//! arithmetic on file values wraps or is checked. The fuzz target (`fuzz/`) drives [`Reader`]
//! with arbitrary bytes.

use super::codec::{unzigzag, CodecError, Cursor};
use super::{
    kind, nsfield, sysctls_kv, trailer, workload_field, Damage, Header, Summary, SysctlsByNetns,
    Version, BLOCK_HEADER_LEN, FILE_PREFIX_LEN, MAGIC, MAX_BLOCK_LEN, MAX_HEADER_LEN, SYNC,
    VERSION_MAJOR,
};
use crate::host::sysctls::Sysctls;
use crate::host::workload::Workload;
use crate::pipeline::event::{Body, Event, ExitReason, Refusal, Sock, Substate, Task};
use anyhow::{anyhow, Context, Result};
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A buffered byte source that knows the file offset of what it holds.
struct Source<R> {
    inner: R,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    /// File offset of `buf[lo]`.
    off: u64,
    eof: bool,
    error: Option<io::Error>,
}

/// Bytes asked of the source per read (the buffer grows beyond it only for a larger block).
const READ_CHUNK: usize = 64 << 10;

impl<R: Read> Source<R> {
    fn new(inner: R) -> Self {
        Source {
            inner,
            buf: Vec::new(),
            lo: 0,
            hi: 0,
            off: 0,
            eof: false,
            error: None,
        }
    }

    fn avail(&self) -> usize {
        self.hi - self.lo
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.lo..self.hi]
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.avail());
        self.lo += n;
        self.off += n as u64;
    }

    /// Tries to hold at least `n` bytes; false at end of file (or on a read error, kept in
    /// `error`). `n` is bounded by the callers (`MAX_BLOCK_LEN`).
    fn fill(&mut self, n: usize) -> bool {
        while self.avail() < n && !self.eof {
            if self.buf.len() - self.lo < n.max(READ_CHUNK) {
                // Move what is left to the front and make room for at least one chunk.
                self.buf.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
                let want = n.max(READ_CHUNK) + READ_CHUNK;
                if self.buf.len() < want {
                    self.buf.resize(want, 0);
                }
            } else if self.hi == self.buf.len() {
                self.buf.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
            }
            match self.inner.read(&mut self.buf[self.hi..]) {
                Ok(0) => self.eof = true,
                Ok(k) => self.hi += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    self.eof = true;
                }
            }
        }
        self.avail() >= n
    }
}

/// The block-local tables that definition records fill.
#[derive(Default)]
struct Tables {
    prev_ts: u64,
    addrs: Vec<IpAddr>,
    netns: Vec<u32>,
    comms: Vec<String>,
    tw_high: Vec<u32>,
    workloads: Vec<Arc<Workload>>,
}

impl Tables {
    fn clear(&mut self) {
        self.prev_ts = 0;
        self.addrs.clear();
        self.netns.clear();
        self.comms.clear();
        self.tw_high.clear();
        self.workloads.clear();
    }
}

enum DecErr {
    Codec(CodecError),
    Index {
        table: &'static str,
        index: u64,
        len: usize,
    },
    Msg(String),
}

impl From<CodecError> for DecErr {
    fn from(e: CodecError) -> Self {
        DecErr::Codec(e)
    }
}

impl std::fmt::Display for DecErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecErr::Codec(e) => write!(f, "{e}"),
            DecErr::Index { table, index, len } => {
                write!(f, "refers to {table} #{index}, but the block defines {len}")
            }
            DecErr::Msg(m) => f.write_str(m),
        }
    }
}

fn lookup<'t, T>(table: &'t [T], name: &'static str, index: u64) -> Result<&'t T, DecErr> {
    usize::try_from(index)
        .ok()
        .and_then(|i| table.get(i))
        .ok_or(DecErr::Index {
            table: name,
            index,
            len: table.len(),
        })
}

/// Reads a trace file: [`Reader::header`], then the events (and damage) in file order.
pub struct Reader<R = File> {
    src: Source<R>,
    header: Header,
    sysctls: SysctlsByNetns,
    summary: Option<Summary>,
    block: Vec<u8>,
    /// File offset of `block[0]`.
    block_off: u64,
    pos: usize,
    tables: Tables,
    /// Start offset and first reason of a damaged region not yet reported.
    pending: Option<(u64, String)>,
    finished: bool,
    skipped: u64,
    blocks: u64,
}

impl Reader<File> {
    /// Opens a trace file and reads its header. Errors name the byte offset.
    pub fn open(path: impl AsRef<Path>) -> Result<Reader<File>> {
        let path = path.as_ref();
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Reader::new(f).with_context(|| path.display().to_string())
    }
}

fn describe_foreign(b: &[u8]) -> &'static str {
    match b {
        [0x7f, b'E', b'L', b'F', ..] => ": an ELF binary",
        [0x1f, 0x8b, ..] => ": gzip-compressed (decompress it first?)",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => ": zstd-compressed (decompress it first?)",
        [0xd4, 0xc3, 0xb2, 0xa1, ..] | [0xa1, 0xb2, 0xc3, 0xd4, ..] => ": a pcap capture",
        [0x0a, 0x0d, 0x0d, 0x0a, ..] => ": a pcapng capture",
        [b'{', ..] => ": looks like NDJSON (twtrace live --json output?)",
        [b, ..] if b.is_ascii_graphic() || b.is_ascii_whitespace() => ": looks like text",
        _ => "",
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl<R: Read> Reader<R> {
    /// Reads the header from any byte source (a file, a slice in tests and fuzzing).
    pub fn new(inner: R) -> Result<Reader<R>> {
        let mut src = Source::new(inner);
        src.fill(FILE_PREFIX_LEN);
        if let Some(e) = src.error.take() {
            return Err(anyhow!("byte 0: read error: {e}"));
        }
        let b = src.bytes();
        if b.is_empty() {
            return Err(anyhow!(
                "byte 0: empty file, not a twtrace trace (the recording wrote nothing)"
            ));
        }
        let m = b.len().min(MAGIC.len());
        if b[..m] != MAGIC[..m] {
            return Err(anyhow!(
                "byte 0: not a twtrace trace file (it starts with {}{}; a trace starts with {})",
                hex(&b[..m]),
                describe_foreign(b),
                hex(&MAGIC)
            ));
        }
        if b.len() < FILE_PREFIX_LEN {
            return Err(anyhow!(
                "byte {}: the file ends inside the header ({} of at least {FILE_PREFIX_LEN} \
                 bytes): the recording stopped before it wrote any event",
                b.len(),
                b.len()
            ));
        }
        let major = u16::from_le_bytes([b[8], b[9]]);
        let minor = u16::from_le_bytes([b[10], b[11]]);
        if major != VERSION_MAJOR {
            let why = if major > VERSION_MAJOR {
                "newer than this twtrace can read; use a newer twtrace"
            } else {
                "an old format this twtrace no longer reads"
            };
            return Err(anyhow!(
                "byte 8: trace format version {major}.{minor} is {why} (this twtrace reads \
                 {VERSION_MAJOR}.x)"
            ));
        }
        let len = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
        if len > MAX_HEADER_LEN {
            return Err(anyhow!(
                "byte 12: header length {len} is implausible (at most {MAX_HEADER_LEN}): \
                 corrupt header"
            ));
        }
        let total = FILE_PREFIX_LEN + len as usize;
        if !src.fill(total) {
            return Err(anyhow!(
                "byte {}: the file ends inside the header ({} of {total} bytes): the recording \
                 stopped before it wrote any event",
                src.avail(),
                src.avail()
            ));
        }
        let fields = &src.bytes()[FILE_PREFIX_LEN..total];
        let actual = crc32c::crc32c(fields);
        if actual != crc {
            return Err(anyhow!(
                "byte {FILE_PREFIX_LEN}: header checksum mismatch (stored {crc:08x}, computed \
                 {actual:08x}): corrupt header"
            ));
        }
        let header =
            Header::decode_fields(Version { major, minor }, fields).map_err(|d| anyhow!("{d}"))?;
        src.consume(total);
        Ok(Reader {
            src,
            sysctls: header.sysctls.clone(),
            header,
            summary: None,
            block: Vec::new(),
            block_off: total as u64,
            pos: 0,
            tables: Tables::default(),
            pending: None,
            finished: false,
            skipped: 0,
            blocks: 0,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Iterates every whole event, with damage reported in place as `Err(Damage)`.
    pub fn events(&mut self) -> &mut Self {
        self
    }

    /// SysctlsByNetns of the header plus those recorded so far in the stream.
    pub fn sysctls(&self) -> &SysctlsByNetns {
        &self.sysctls
    }

    /// The end-of-recording summary, once read (absent after a crash).
    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    /// Records of kinds this reader does not know (written by a newer twtrace), skipped.
    pub fn skipped_records(&self) -> u64 {
        self.skipped
    }

    /// Whole blocks read so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    fn note_damage(&mut self, offset: u64, reason: String) {
        if self.pending.is_none() {
            self.pending = Some((offset, reason));
        }
    }

    /// Closes a pending damaged region at `end` (the next whole block, or the end of file).
    fn take_damage(&mut self, end: u64, at_eof: bool) -> Option<Damage> {
        let (offset, reason) = self.pending.take()?;
        let skipped = end.saturating_sub(offset);
        let message = if at_eof {
            format!("{reason}; nothing readable in the last {skipped} bytes of the file")
        } else {
            format!("{reason}; skipped {skipped} bytes to the next whole block at byte {end}")
        };
        Some(Damage { offset, message })
    }

    /// Loads the next whole block into `self.block`. Returns damage found on the way first
    /// (the block stays loaded and is read next); `None` at the end of the file.
    fn next_block(&mut self) -> Option<Damage> {
        loop {
            if !self.src.fill(BLOCK_HEADER_LEN) {
                let end = self.src.off + self.src.avail() as u64;
                if self.src.avail() > 0 {
                    self.note_damage(
                        self.src.off,
                        format!(
                            "the file ends inside a block header ({} of {BLOCK_HEADER_LEN} \
                             bytes): the recording was cut short",
                            self.src.avail()
                        ),
                    );
                    self.src.consume(self.src.avail());
                }
                if let Some(e) = self.src.error.take() {
                    self.note_damage(end, format!("read error: {e}"));
                }
                self.finished = true;
                return self.take_damage(end, true);
            }
            let off = self.src.off;
            let b = self.src.bytes();
            if b[..8] != SYNC {
                self.note_damage(off, "no block marker where a block should start".into());
                // Scan for the next marker; keep a possible partial marker at the end.
                let b = self.src.bytes();
                let skip = match b.windows(SYNC.len()).position(|w| w == SYNC) {
                    Some(i) => i,
                    None => b.len() - (SYNC.len() - 1),
                };
                self.src.consume(skip.max(1));
                continue;
            }
            let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
            let crc = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
            if len == 0 || len > MAX_BLOCK_LEN {
                self.note_damage(
                    off,
                    format!("block length {len} is implausible: corrupt block header"),
                );
                self.src.consume(1);
                continue;
            }
            let total = BLOCK_HEADER_LEN + len as usize;
            if !self.src.fill(total) {
                self.note_damage(
                    off,
                    format!(
                        "the file ends inside a block ({} of {total} bytes present): the \
                         recording was cut short (crash, SIGKILL or full disk), or the block's \
                         length is corrupt",
                        self.src.avail()
                    ),
                );
                self.src.consume(1);
                continue;
            }
            let payload = &self.src.bytes()[BLOCK_HEADER_LEN..total];
            let actual = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload);
            if actual != crc {
                self.note_damage(
                    off,
                    format!("checksum mismatch in a block of {total} bytes: corrupt data"),
                );
                self.src.consume(1);
                continue;
            }
            self.block.clear();
            self.block.extend_from_slice(payload);
            self.block_off = off + BLOCK_HEADER_LEN as u64;
            self.pos = 0;
            self.tables.clear();
            self.blocks += 1;
            self.src.consume(total);
            if let Some(d) = self.take_damage(off, false) {
                return Some(d);
            }
            return None;
        }
    }

    /// The next event or damage; `None` at the end.
    fn next_item(&mut self) -> Option<Result<Event, Damage>> {
        loop {
            if self.pos >= self.block.len() {
                if self.finished {
                    return None;
                }
                self.block.clear();
                self.pos = 0;
                if let Some(d) = self.next_block() {
                    return Some(Err(d));
                }
                if self.block.is_empty() {
                    return None;
                }
            }
            let rec_off = self.block_off + self.pos as u64;
            let mut c = Cursor::new(&self.block[self.pos..]);
            let framed = c.varint().and_then(|tag| Ok((tag, c.bytes()?)));
            let (tag, body) = match framed {
                Ok(x) => x,
                Err(e) => {
                    // The framing inside this block is lost: give up on the rest of it.
                    let rest = self.block.len() - self.pos;
                    self.pos = self.block.len();
                    return Some(Err(Damage {
                        offset: rec_off,
                        message: format!(
                            "malformed record framing ({e}); skipped the last {rest} bytes of \
                             its block"
                        ),
                    }));
                }
            };
            self.pos += c.pos();
            let k = tag >> 1;
            let mut b = Cursor::new(body);
            let t = &mut self.tables;
            if tag & 1 == 1 {
                match b.varint() {
                    Ok(d) => t.prev_ts = t.prev_ts.wrapping_add(unzigzag(d) as u64),
                    Err(e) => {
                        return Some(Err(Damage {
                            offset: rec_off,
                            message: format!("malformed timestamp in a record of kind {k}: {e}"),
                        }))
                    }
                }
            }
            let ts = t.prev_ts;
            let r: Result<Option<Event>, DecErr> = match k {
                kind::ENTER..=kind::BOUND_CONNECT => decode_event(k, ts, &mut b, t).map(Some),
                kind::DEF_ADDR => match body.len() {
                    4 => {
                        let a: [u8; 4] = body.try_into().unwrap_or([0; 4]);
                        t.addrs.push(IpAddr::V4(Ipv4Addr::from(a)));
                        Ok(None)
                    }
                    16 => {
                        let a: [u8; 16] = body.try_into().unwrap_or([0; 16]);
                        t.addrs.push(IpAddr::V6(Ipv6Addr::from(a)));
                        Ok(None)
                    }
                    n => Err(DecErr::Msg(format!("address of {n} bytes"))),
                },
                kind::DEF_NETNS => b.varint().map_err(DecErr::from).and_then(|v| {
                    let ns = u32::try_from(v)
                        .map_err(|_| DecErr::Msg(format!("netns inode {v} out of range")))?;
                    t.netns.push(ns);
                    Ok(None)
                }),
                kind::DEF_COMM => {
                    t.comms.push(String::from_utf8_lossy(body).into_owned());
                    Ok(None)
                }
                kind::DEF_WORKLOAD => decode_workload(&mut b).map(|w| {
                    t.workloads.push(Arc::new(w));
                    None
                }),
                kind::DEF_TW_HIGH => b.u32_le().map_err(DecErr::from).map(|v| {
                    t.tw_high.push(v);
                    None
                }),
                kind::SUMMARY => match Summary::decode(&mut b) {
                    Ok(s) => {
                        self.summary = Some(s);
                        Ok(None)
                    }
                    Err(e) => Err(e.into()),
                },
                _ => {
                    self.skipped += 1;
                    Ok(None)
                }
            };
            match r {
                Ok(Some(e)) => {
                    if let Body::Netns { netns, sysctls } = &e.body {
                        self.sysctls.insert(*netns as u64, sysctls_kv(sysctls));
                    }
                    return Some(Ok(e));
                }
                Ok(None) => {}
                Err(e) => {
                    return Some(Err(Damage {
                        offset: rec_off,
                        message: format!("malformed record of kind {k}: {e}; record skipped"),
                    }))
                }
            }
        }
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Event, Damage>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_item()
    }
}

fn decode_sock(c: &mut Cursor, t: &Tables) -> Result<Sock, DecErr> {
    let high = *lookup(&t.tw_high, "address prefix", c.varint()?)?;
    let low = c.u32_le()?;
    let netns = *lookup(&t.netns, "netns", c.varint()?)?;
    let laddr = *lookup(&t.addrs, "address", c.varint()?)?;
    let lport = c.u16_le()?;
    let raddr = *lookup(&t.addrs, "address", c.varint()?)?;
    let rport = c.u16_le()?;
    Ok(Sock {
        tw: (high as u64) << 32 | low as u64,
        netns,
        laddr,
        lport,
        raddr,
        rport,
    })
}

fn decode_substate(c: &mut Cursor) -> Result<Substate, DecErr> {
    match c.u8()? {
        0 => Ok(Substate::TimeWait),
        1 => Ok(Substate::FinWait2),
        2 => Ok(Substate::Other(c.u8()?)),
        x => Err(DecErr::Msg(format!("substate code {x}"))),
    }
}

/// Codes a newer writer may add decode as `Unknown` (documented in trace-format.md).
fn reason_from(code: u8) -> ExitReason {
    match code {
        0 => ExitReason::Expired,
        // 1 is reserved: the foundation's unclassified `early`, never written by a release.
        2 => ExitReason::Reused,
        3 => ExitReason::Syn,
        4 => ExitReason::Rst,
        5 => ExitReason::Purged,
        _ => ExitReason::Unknown,
    }
}

fn refusal_from(code: u8) -> Refusal {
    match code {
        0 => Refusal::ReuseOff,
        1 => Refusal::LoopbackOnly,
        2 => Refusal::NoTimestamps,
        3 => Refusal::TooYoung,
        4 => Refusal::FinWait2,
        5 => Refusal::NoTimewait,
        _ => Refusal::Unknown,
    }
}

use super::flag::{AGE, CANDIDATES, LIFETIME, PORTS, SNAPSHOT, TASK};

fn decode_errno(c: &mut Cursor) -> Result<i32, DecErr> {
    let errno = unzigzag(c.varint()?);
    i32::try_from(errno).map_err(|_| DecErr::Msg(format!("errno {errno} out of range")))
}

fn decode_task(c: &mut Cursor, t: &Tables, flags: u8) -> Result<Option<Task>, DecErr> {
    if flags & TASK == 0 {
        return Ok(None);
    }
    let pid = c.varint_u32()?;
    let comm = lookup(&t.comms, "process name", c.varint()?)?
        .as_str()
        .into();
    Ok(Some(Task { pid, comm }))
}

fn decode_event(k: u64, ts_ns: u64, c: &mut Cursor, t: &Tables) -> Result<Event, DecErr> {
    let body = match k {
        kind::ENTER => {
            let sock = decode_sock(c, t)?;
            let substate = decode_substate(c)?;
            let timeout_ms = c.varint()?;
            let flags = c.u8()?;
            let age_ms = if flags & AGE != 0 {
                Some(c.varint()?)
            } else {
                None
            };
            Body::Enter {
                sock,
                substate,
                timeout_ms,
                task: decode_task(c, t, flags)?,
                snapshot: flags & SNAPSHOT != 0,
                age_ms,
            }
        }
        kind::PROMOTE => {
            let sock = decode_sock(c, t)?;
            let timeout_ms = c.varint()?;
            let flags = c.u8()?;
            let age_ms = if flags & AGE != 0 {
                Some(c.varint()?)
            } else {
                None
            };
            Body::Promote {
                sock,
                timeout_ms,
                age_ms,
            }
        }
        kind::EXIT => {
            let sock = decode_sock(c, t)?;
            let substate = decode_substate(c)?;
            let reason = reason_from(c.u8()?);
            let flags = c.u8()?;
            let lifetime_ms = if flags & LIFETIME != 0 {
                Some(c.varint()?)
            } else {
                None
            };
            Body::Exit {
                sock,
                substate,
                reason,
                lifetime_ms,
                task: decode_task(c, t, flags)?,
            }
        }
        kind::OVERFLOW => Body::Overflow {
            sock: decode_sock(c, t)?,
        },
        kind::ABORT => {
            let sock = decode_sock(c, t)?;
            let flags = c.u8()?;
            Body::Abort {
                sock,
                task: decode_task(c, t, flags)?,
            }
        }
        kind::CONNECT_FAIL => {
            let sock = decode_sock(c, t)?;
            let errno = decode_errno(c)?;
            let refusal = refusal_from(c.u8()?);
            let timewait = c.varint_u32()?;
            let flags = c.u8()?;
            let task = decode_task(c, t, flags)?;
            let candidates = if flags & CANDIDATES != 0 {
                Some(c.varint_u32()?)
            } else {
                None
            };
            Body::ConnectFail {
                sock,
                errno,
                refusal,
                timewait,
                candidates,
                task,
            }
        }
        kind::PAWS_REJECT => Body::PawsReject {
            sock: decode_sock(c, t)?,
        },
        kind::BIND_FAIL => {
            let netns = c.varint_u32()?;
            let family = c.u8()?;
            let errno = decode_errno(c)?;
            let timewait = c.varint_u32()?;
            let flags = c.u8()?;
            let ports = if flags & PORTS != 0 {
                Some(c.varint_u32()?)
            } else {
                None
            };
            Body::BindFail {
                netns,
                family,
                errno,
                timewait,
                ports,
                task: decode_task(c, t, flags)?,
            }
        }
        kind::BOUND_CONNECT => {
            let sock = decode_sock(c, t)?;
            let flags = c.u8()?;
            Body::BoundConnect {
                sock,
                task: decode_task(c, t, flags)?,
            }
        }
        kind::LOST => Body::Lost { count: c.varint()? },
        kind::NETNS => {
            let netns = c.varint_u32()?;
            Body::Netns {
                netns,
                sysctls: decode_netns_fields(c)?,
            }
        }
        other => return Err(DecErr::Msg(format!("kind {other} is not an event"))),
    };
    let mut e = Event::new(ts_ns, body);
    // Minor 3 on: tagged fields end the record (the workload of an event owned by a cgroup).
    while !c.is_empty() {
        let tag = c.varint()?;
        let mut v = Cursor::new(c.bytes()?);
        if tag == trailer::WORKLOAD {
            let w = lookup(&t.workloads, "workload", v.varint()?)?;
            e.cgroup = w.cgroup_id;
            e.workload = Some(w.clone());
        }
    }
    Ok(e)
}

/// A `DEF_WORKLOAD` body: the cgroup id, then tagged strings (unknown tags skipped).
fn decode_workload(c: &mut Cursor) -> Result<Workload, DecErr> {
    let id = c.varint()?;
    let (mut path, mut pod) = (None, None);
    while !c.is_empty() {
        let tag = c.varint()?;
        let v = String::from_utf8_lossy(c.bytes()?).into_owned();
        match tag {
            workload_field::PATH => path = Some(v),
            workload_field::POD => pod = Some(v),
            _ => {}
        }
    }
    let mut w = match path {
        Some(p) => Workload::from_path(id, &p),
        None => Workload::unknown(id),
    };
    w.pod = pod;
    Ok(w)
}

fn decode_netns_fields(c: &mut Cursor) -> Result<Sysctls, DecErr> {
    fn narrow<T: TryFrom<u64>>(tag: u64, v: u64) -> Result<Option<T>, DecErr> {
        T::try_from(v)
            .map(Some)
            .map_err(|_| DecErr::Msg(format!("sysctl field {tag}: value {v} out of range")))
    }
    let mut s = Sysctls::default();
    let (mut lo, mut hi) = (None, None);
    while !c.is_empty() {
        let tag = c.varint()?;
        let v = c.varint()?;
        match tag {
            nsfield::TW_REUSE => s.tw_reuse = narrow(tag, v)?,
            nsfield::TW_REUSE_DELAY_MS => s.tw_reuse_delay_ms = narrow(tag, v)?,
            nsfield::MAX_TW_BUCKETS => s.max_tw_buckets = Some(v),
            nsfield::TIMESTAMPS => s.timestamps = narrow(tag, v)?,
            nsfield::FIN_TIMEOUT_S => s.fin_timeout_s = narrow(tag, v)?,
            nsfield::RFC1337 => s.rfc1337 = narrow(tag, v)?,
            nsfield::PORT_RANGE_LO => lo = narrow::<u16>(tag, v)?,
            nsfield::PORT_RANGE_HI => hi = narrow::<u16>(tag, v)?,
            _ => {}
        }
    }
    s.port_range = lo.zip(hi);
    Ok(s)
}

/// A whole file, read: the events in file order and every damaged region.
#[derive(Clone, Debug)]
pub struct Trace {
    pub path: PathBuf,
    pub header: Header,
    pub events: Vec<Event>,
    pub damage: Vec<Damage>,
    /// Header sysctls plus those recorded during the trace.
    pub sysctls: SysctlsByNetns,
    pub summary: Option<Summary>,
    /// Records of newer kinds this twtrace does not know.
    pub skipped_records: u64,
}

/// Reads a whole file. Errors only when the header cannot be read; damage further on is in
/// [`Trace::damage`].
pub fn read_all(path: impl AsRef<Path>) -> Result<Trace> {
    let path = path.as_ref();
    let mut r = Reader::open(path)?;
    let mut events = Vec::new();
    let mut damage = Vec::new();
    for item in r.events() {
        match item {
            Ok(e) => events.push(e),
            Err(d) => damage.push(d),
        }
    }
    Ok(Trace {
        path: path.to_path_buf(),
        header: r.header.clone(),
        events,
        damage,
        sysctls: r.sysctls.clone(),
        summary: r.summary,
        skipped_records: r.skipped,
    })
}
