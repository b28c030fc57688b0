//! Trace files: the compact binary format written by `twtrace record` and read by `report` and
//! `export` (specified in `docs/trace-format.md`).
//!
//! A file is a checksummed header followed by self-contained blocks. Each block starts with a
//! sync marker, its length and a CRC32C, so a reader keeps every whole block before a crash or
//! a full disk and can find the next whole block after a corrupt region. Inside a block,
//! records are length-prefixed (an unknown newer kind is skipped, never fatal), timestamps are
//! zigzag deltas and repeated addresses, namespaces, process names and address prefixes are
//! interned through definition records that reset at each block.
//!
//! Writing: [`Writer`]. Reading: [`Reader`] (streaming, yields `Result<Event, Damage>`) or
//! [`read_all`].

mod codec;
mod reader;
mod writer;

pub mod synthetic;

#[cfg(test)]
mod tests;

pub use reader::{read_all, Reader, Trace};
pub use writer::{create_private, part_path, Writer, WriterOptions, MIN_MAX_SIZE};

use crate::kernel::loader::HookStatus;
use crate::kernel::sysinfo::{self, Clock};
use codec::{put_bytes, put_varint, Cursor};
use std::collections::BTreeMap;

/// First 8 bytes of every trace file. The leading non-ASCII byte keeps text tools from taking
/// it for text (as in PNG).
pub const MAGIC: [u8; 8] = *b"\x89TWTRACE";
/// Major version: a reader refuses any other. Bumped only for incompatible changes.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version: additive changes (new record kinds, header fields, trailing fields, enum
/// codes). Readers accept any minor of their major.
/// 1: `connect_fail` may end with the function tier's candidate count.
/// 2: record kinds `bind_fail` and `bind_connect`.
/// 3: workload definitions (`DEF_WORKLOAD`), and a trailing workload index on the events of a
///    known cgroup.
pub const VERSION_MINOR: u16 = 3;
/// Starts every block. A resynchronising reader looks for it after damage; a false match inside
/// a payload fails the block's checksum and the search goes on.
pub const SYNC: [u8; 8] = [0xd7, b'T', b'W', b'B', b'L', b'K', 0x0d, 0x0a];
/// Fixed file-header prefix: magic, major, minor, field-list length, field-list CRC32C.
pub const FILE_PREFIX_LEN: usize = 8 + 2 + 2 + 4 + 4;
/// Block header: sync, payload length, CRC32C(length ‖ payload).
pub const BLOCK_HEADER_LEN: usize = 8 + 4 + 4;
/// Upper bound on a header's field list; anything larger is damage, not a header.
pub const MAX_HEADER_LEN: u32 = 1 << 20;
/// Upper bound on a block payload. Writers use far less (64 KiB by default).
pub const MAX_BLOCK_LEN: u32 = 16 << 20;

/// Record kinds. A record's tag is `kind << 1 | timed`; timed records start with the zigzag
/// timestamp delta, so a reader keeps time even across kinds it does not know.
pub(crate) mod kind {
    pub const ENTER: u64 = 1;
    pub const PROMOTE: u64 = 2;
    pub const EXIT: u64 = 3;
    pub const OVERFLOW: u64 = 4;
    pub const ABORT: u64 = 5;
    pub const CONNECT_FAIL: u64 = 6;
    pub const PAWS_REJECT: u64 = 7;
    pub const LOST: u64 = 8;
    pub const NETNS: u64 = 9;
    /// Minor 2.
    pub const BIND_FAIL: u64 = 10;
    pub const BOUND_CONNECT: u64 = 11;
    // Untimed: definitions (append to the block's tables) and metadata.
    pub const DEF_ADDR: u64 = 16;
    pub const DEF_NETNS: u64 = 17;
    pub const DEF_COMM: u64 = 18;
    pub const DEF_TW_HIGH: u64 = 19;
    /// Minor 3: a cgroup id, then tagged fields (see `workload_field`).
    pub const DEF_WORKLOAD: u64 = 20;
    // 24 is reserved (an early draft's sysctl record; `NETNS` events carry them).
    pub const SUMMARY: u64 = 25;
}

/// The flags byte of event records: which optional fields follow.
pub(crate) mod flag {
    pub const TASK: u8 = 1;
    pub const SNAPSHOT: u8 = 2;
    pub const AGE: u8 = 4;
    pub const LIFETIME: u8 = 8;
    /// connect_fail (minor 1): the function tier's candidate count follows the task.
    pub const CANDIDATES: u8 = 16;
    /// bind_fail (minor 2): the pool's size follows.
    pub const PORTS: u8 = 32;
}

/// The tagged fields of a `DEF_WORKLOAD` record (each a string; a reader skips unknown tags).
/// Only facts are stored: the container id, pod UID and QoS class are read off the path again.
pub(crate) mod workload_field {
    /// The cgroup path; absent: the id was unknown when recorded.
    pub const PATH: u64 = 1;
    /// `namespace/name` of the pod (from /var/log/pods).
    pub const POD: u64 = 2;
}

/// Tags of the fields that may end an event record (minor 3 on): tag varint, length varint,
/// value. A reader skips the tags it does not know.
pub(crate) mod trailer {
    /// Index in the block's workload table (varint).
    pub const WORKLOAD: u64 = 1;
}

/// Header field tags.
mod field {
    pub const KERNEL_RELEASE: u64 = 1;
    pub const HOSTNAME: u64 = 2;
    pub const HZ: u64 = 3;
    pub const CLOCK_OFFSET: u64 = 4;
    pub const HOOK: u64 = 5;
    pub const SYSCTLS: u64 = 6;
    pub const STARTED_NS: u64 = 7;
    pub const TOOL: u64 = 8;
    pub const PART: u64 = 9;
    pub const FILTER: u64 = 10;
}

/// Summary field tags.
mod sfield {
    pub const EVENTS: u64 = 1;
    pub const LOST: u64 = 2;
    pub const DECODE_ERRORS: u64 = 3;
    pub const READ_ERRORS: u64 = 4;
    pub const FILTERED: u64 = 5;
    pub const END_NS: u64 = 6;
    pub const PARTS: u64 = 7;
    pub const MAP_ERRORS: u64 = 8;
    pub const SKIPPED_RUNS: u64 = 9;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One hook of the tracer that made the file, as it was at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookInfo {
    /// e.g. `tp_btf/timer_start`.
    pub label: String,
    pub program: String,
    pub purpose: String,
    pub required: bool,
    /// Why it could not be attached; `None` when it was.
    pub error: Option<String>,
}

impl From<&HookStatus> for HookInfo {
    fn from(h: &HookStatus) -> Self {
        HookInfo {
            label: h.label(),
            program: h.hook.program.to_string(),
            purpose: h.hook.purpose.to_string(),
            required: h.hook.required,
            error: h.result.as_ref().err().map(|e| short_error(e)),
        }
    }
}

/// Longest hook error kept in a header: the reason, not a whole verifier log (kilobytes that
/// every rotated part would repeat).
const MAX_HOOK_ERROR: usize = 240;

fn short_error(e: &str) -> String {
    let first = e.lines().next().unwrap_or("");
    if first.len() <= MAX_HOOK_ERROR && first.len() == e.trim_end().len() {
        return first.to_string();
    }
    let mut end = first.len().min(MAX_HOOK_ERROR);
    while !first.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &first[..end])
}

/// TIME_WAIT sysctls per network namespace inode: `net.ipv4.tcp_tw_reuse` → `"2"`, ….
pub type SysctlsByNetns = BTreeMap<u64, BTreeMap<String, String>>;

/// What a later reader needs to interpret the events.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Of the file as read; [`Header::capture`] sets the writer's own.
    pub version: Version,
    pub kernel_release: String,
    pub hostname: String,
    pub hz: u64,
    /// Maps the events' CLOCK_MONOTONIC timestamps to wall-clock time.
    pub clock: Clock,
    pub hooks: Vec<HookInfo>,
    /// SysctlsByNetns known when this file was started (later ones arrive as records; see
    /// [`Reader::sysctls`]).
    pub sysctls: SysctlsByNetns,
    /// CLOCK_MONOTONIC ns when the recording started.
    pub started_ns: u64,
    /// `twtrace <version>` of the writer.
    pub tool: String,
    /// Rotation index: 0 for FILE, n for FILE.n.
    pub part: u32,
    /// The filters of the recording, as given on the command line (empty: everything).
    pub filter: String,
}

impl Header {
    /// A header for a recording starting now on this machine.
    pub fn capture(clock: Clock, hz: u64, hooks: &[HookStatus]) -> Header {
        Header {
            version: Version {
                major: VERSION_MAJOR,
                minor: VERSION_MINOR,
            },
            kernel_release: sysinfo::kernel_release().unwrap_or_default(),
            hostname: sysinfo::hostname(),
            hz,
            clock,
            hooks: hooks.iter().map(HookInfo::from).collect(),
            sysctls: SysctlsByNetns::new(),
            started_ns: sysinfo::monotonic_ns(),
            tool: format!("twtrace {}", env!("CARGO_PKG_VERSION")),
            part: 0,
            filter: String::new(),
        }
    }

    /// The header's field list (without the fixed prefix).
    fn encode_fields(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let mut f = |tag: u64, val: &[u8]| {
            put_varint(&mut out, tag);
            put_bytes(&mut out, val);
        };
        f(field::KERNEL_RELEASE, self.kernel_release.as_bytes());
        f(field::HOSTNAME, self.hostname.as_bytes());
        let mut v = Vec::new();
        put_varint(&mut v, self.hz);
        f(field::HZ, &v);
        f(field::CLOCK_OFFSET, &self.clock.offset_ns.to_le_bytes());
        for h in &self.hooks {
            let mut v = Vec::new();
            put_bytes(&mut v, h.label.as_bytes());
            put_bytes(&mut v, h.program.as_bytes());
            put_bytes(&mut v, h.purpose.as_bytes());
            v.push(h.required as u8);
            match &h.error {
                None => v.push(0),
                Some(e) => {
                    v.push(1);
                    put_bytes(&mut v, e.as_bytes());
                }
            }
            f(field::HOOK, &v);
        }
        for (ns, kv) in &self.sysctls {
            f(field::SYSCTLS, &encode_sysctls(*ns, kv));
        }
        v.clear();
        put_varint(&mut v, self.started_ns);
        f(field::STARTED_NS, &v);
        f(field::TOOL, self.tool.as_bytes());
        v.clear();
        put_varint(&mut v, self.part as u64);
        f(field::PART, &v);
        f(field::FILTER, self.filter.as_bytes());
        out
    }

    /// The whole file header: fixed prefix and field list.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let fields = self.encode_fields();
        let mut out = Vec::with_capacity(FILE_PREFIX_LEN + fields.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        out.extend_from_slice(&VERSION_MINOR.to_le_bytes());
        out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&fields).to_le_bytes());
        out.extend_from_slice(&fields);
        out
    }

    /// Parses a field list. Unknown tags are skipped (newer minor versions add fields); a
    /// malformed list is an error naming the byte offset within the file.
    fn decode_fields(version: Version, fields: &[u8]) -> Result<Header, Damage> {
        let mut h = Header {
            version,
            kernel_release: String::new(),
            hostname: String::new(),
            hz: 0,
            clock: Clock { offset_ns: 0 },
            hooks: Vec::new(),
            sysctls: SysctlsByNetns::new(),
            started_ns: 0,
            tool: String::new(),
            part: 0,
            filter: String::new(),
        };
        let mut c = Cursor::new(fields);
        while !c.is_empty() {
            let at = (FILE_PREFIX_LEN + c.pos()) as u64;
            let bad = |what: &str, e: codec::CodecError| Damage {
                offset: at,
                message: format!("malformed header field ({what}): {e}"),
            };
            let tag = c.varint().map_err(|e| bad("tag", e))?;
            let val = c.bytes().map_err(|e| bad("length", e))?;
            let mut v = Cursor::new(val);
            let r: codec::CResult<()> = (|| {
                match tag {
                    field::KERNEL_RELEASE => h.kernel_release = lossy(val),
                    field::HOSTNAME => h.hostname = lossy(val),
                    field::HZ => h.hz = v.varint()?,
                    field::CLOCK_OFFSET => {
                        h.clock = Clock {
                            offset_ns: i128::from_le_bytes(v.array()?),
                        }
                    }
                    field::HOOK => {
                        let label = v.string()?;
                        let program = v.string()?;
                        let purpose = v.string()?;
                        let required = v.u8()? != 0;
                        let error = match v.u8()? {
                            0 => None,
                            _ => Some(v.string()?),
                        };
                        h.hooks.push(HookInfo {
                            label,
                            program,
                            purpose,
                            required,
                            error,
                        });
                    }
                    field::SYSCTLS => {
                        let (ns, kv) = decode_sysctls(&mut v)?;
                        h.sysctls.entry(ns).or_default().extend(kv);
                    }
                    field::STARTED_NS => h.started_ns = v.varint()?,
                    field::TOOL => h.tool = lossy(val),
                    field::PART => h.part = v.varint_u32()?,
                    field::FILTER => h.filter = lossy(val),
                    _ => {}
                }
                Ok(())
            })();
            r.map_err(|e| bad(&format!("tag {tag}"), e))?;
        }
        Ok(h)
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Tags of the sysctl fields of a `netns` event (see `docs/trace-format.md`).
pub(crate) mod nsfield {
    pub const TW_REUSE: u64 = 1;
    pub const TW_REUSE_DELAY_MS: u64 = 2;
    pub const MAX_TW_BUCKETS: u64 = 3;
    pub const TIMESTAMPS: u64 = 4;
    pub const FIN_TIMEOUT_S: u64 = 5;
    pub const RFC1337: u64 = 6;
    pub const PORT_RANGE_LO: u64 = 7;
    pub const PORT_RANGE_HI: u64 = 8;
}

/// Typed sysctls (from a `netns` event or a live read) as the header's key/value strings,
/// named after the sysctls and formatted as `/proc/sys` shows them.
pub fn sysctls_kv(s: &crate::host::sysctls::Sysctls) -> BTreeMap<String, String> {
    s.values()
        .into_iter()
        .map(|(k, v)| (format!("net.ipv4.{k}"), v))
        .collect()
}

/// The header's key/value strings back to typed sysctls (the inverse of [`sysctls_kv`]).
pub fn sysctls_from_kv(kv: &BTreeMap<String, String>) -> crate::host::sysctls::Sysctls {
    crate::host::sysctls::Sysctls::from_values(|k| kv.get(&format!("net.ipv4.{k}")).cloned())
}

fn encode_sysctls(netns: u64, kv: &BTreeMap<String, String>) -> Vec<u8> {
    let mut v = Vec::new();
    put_varint(&mut v, netns);
    put_varint(&mut v, kv.len() as u64);
    for (k, val) in kv {
        put_bytes(&mut v, k.as_bytes());
        put_bytes(&mut v, val.as_bytes());
    }
    v
}

fn decode_sysctls(c: &mut Cursor) -> codec::CResult<(u64, Vec<(String, String)>)> {
    let ns = c.varint()?;
    let n = c.varint()?;
    // The count is untrusted: every pair takes at least two bytes, so cap the reservation.
    let mut kv = Vec::with_capacity((n as usize).min(c.remaining() / 2));
    for _ in 0..n {
        let k = c.string()?;
        let v = c.string()?;
        kv.push((k, v));
    }
    Ok((ns, kv))
}

/// Totals written once at the end of a recording (absent after a crash or SIGKILL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events written, over all parts.
    pub events: u64,
    /// Events the kernel could not queue (also present as `lost` events in the stream).
    pub lost: u64,
    /// Ring-buffer records that could not be decoded.
    pub decode_errors: u64,
    /// Kernel-side read failures (`bpf_probe_read_kernel`).
    pub read_errors: u64,
    /// Kernel-side correlation-map updates that failed (some attributions missing).
    pub map_errors: u64,
    /// Program runs the kernel skipped (already running on that CPU): events not seen.
    pub skipped_runs: u64,
    /// Events left out by the recording's filters.
    pub filtered: u64,
    /// CLOCK_MONOTONIC ns when the recording ended.
    pub end_ns: u64,
    /// Files written (rotation parts).
    pub parts: u64,
}

impl Summary {
    fn encode(&self, out: &mut Vec<u8>) {
        for (tag, v) in [
            (sfield::EVENTS, self.events),
            (sfield::LOST, self.lost),
            (sfield::DECODE_ERRORS, self.decode_errors),
            (sfield::READ_ERRORS, self.read_errors),
            (sfield::FILTERED, self.filtered),
            (sfield::END_NS, self.end_ns),
            (sfield::PARTS, self.parts),
            (sfield::MAP_ERRORS, self.map_errors),
            (sfield::SKIPPED_RUNS, self.skipped_runs),
        ] {
            put_varint(out, tag);
            put_varint(out, v);
        }
    }

    fn decode(c: &mut Cursor) -> codec::CResult<Summary> {
        let mut s = Summary::default();
        while !c.is_empty() {
            let tag = c.varint()?;
            let v = c.varint()?;
            match tag {
                sfield::EVENTS => s.events = v,
                sfield::LOST => s.lost = v,
                sfield::DECODE_ERRORS => s.decode_errors = v,
                sfield::READ_ERRORS => s.read_errors = v,
                sfield::FILTERED => s.filtered = v,
                sfield::END_NS => s.end_ns = v,
                sfield::PARTS => s.parts = v,
                sfield::MAP_ERRORS => s.map_errors = v,
                sfield::SKIPPED_RUNS => s.skipped_runs = v,
                _ => {}
            }
        }
        Ok(s)
    }
}

/// A damaged region of a file: what could not be read there, and where. Reading goes on past
/// it wherever the framing allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset in the file where the damage starts.
    pub offset: u64,
    pub message: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for Damage {}
