//! The live sizes of another process's BPF hash maps, from outside: the map ids come from its
//! `/proc/PID/fdinfo`, each map is opened by id (`BPF_MAP_GET_FD_BY_ID`, read-only) and its
//! keys are walked with `BPF_MAP_GET_NEXT_KEY`. Nothing in the tracer has to change for it,
//! and nothing is written to its maps.

use std::os::fd::{FromRawFd, OwnedFd};

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_F_RDONLY: u32 = 1 << 3;

/// Map types whose keys can be walked and whose size means "entries alive": hash, per-CPU
/// hash, LRU hash, LRU per-CPU hash. Arrays are always full; ring buffers have no keys.
const HASH_TYPES: &[u32] = &[1, 5, 9, 10];

/// One map of the process, as its fdinfo describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDesc {
    pub id: u32,
    pub map_type: u32,
    pub key_size: u32,
    pub max_entries: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSize {
    pub id: u32,
    pub name: String,
    pub max_entries: u32,
    /// Keys found; `None` when the walk failed.
    pub entries: Option<u64>,
}

pub fn parse_fdinfo_map(fdinfo: &str) -> Option<MapDesc> {
    let field = |k: &str| -> Option<u32> {
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(k))?
            .trim()
            .parse()
            .ok()
    };
    Some(MapDesc {
        id: field("map_id:")?,
        map_type: field("map_type:")?,
        key_size: field("key_size:")?,
        max_entries: field("max_entries:")?,
    })
}

/// The hash maps `pid` holds, deduplicated by id.
pub fn hash_maps_of(pid: u32) -> Vec<MapDesc> {
    let mut out: Vec<MapDesc> = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if let Some(m) = parse_fdinfo_map(&text) {
            if HASH_TYPES.contains(&m.map_type) && !out.iter().any(|o| o.id == m.id) {
                out.push(m);
            }
        }
    }
    out.sort_by_key(|m| m.id);
    out
}

/// Sizes of the hash maps of `pid`; names from the kernel's map info (15 bytes at most).
pub fn sizes_of(pid: u32) -> Vec<MapSize> {
    let names: Vec<(u32, String)> = aya::maps::loaded_maps()
        .flatten()
        .map(|m| (m.id(), m.name_as_str().unwrap_or("?").to_string()))
        .collect();
    hash_maps_of(pid)
        .into_iter()
        .map(|m| MapSize {
            id: m.id,
            name: names
                .iter()
                .find(|(id, _)| *id == m.id)
                .map_or_else(|| "?".to_string(), |(_, n)| n.clone()),
            max_entries: m.max_entries,
            entries: count_keys(&m),
        })
        .collect()
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 4]) -> libc::c_long {
    // SAFETY: `attr` is a zeroed 32-byte bpf_attr large enough for both commands used here;
    // the kernel reads at most `size` bytes of it.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr() as *mut libc::c_void,
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    }
}

/// Walks the keys of one map. A key deleted under the walk makes the kernel restart from the
/// first key, so the walk is bounded (twice `max_entries` steps) and approximate on a busy
/// map; at this bench's sampling (once a minute) that is what is wanted: a size, not a census.
fn count_keys(m: &MapDesc) -> Option<u64> {
    let mut attr = [0u64; 4];
    attr[0] = u64::from(m.id);
    attr[1] = u64::from(BPF_F_RDONLY); // open_flags, after start_id and next_id
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr);
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let ks = m.key_size.clamp(1, 4096) as usize;
    let (mut key, mut next) = (vec![0u8; ks], vec![0u8; ks]);
    let mut first = true;
    let mut n = 0u64;
    for _ in 0..(2 * u64::from(m.max_entries) + 2) {
        let mut a = [0u64; 4];
        a[0] = raw as u32 as u64;
        // A null key asks for the first one.
        a[1] = if first { 0 } else { key.as_ptr() as u64 };
        a[2] = next.as_mut_ptr() as u64;
        if bpf(BPF_MAP_GET_NEXT_KEY, &mut a) < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            // ENOENT: past the last key.
            return (e == Some(libc::ENOENT)).then_some(n);
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_map() {
        let fi = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1053\nmap_type:\t9\nkey_size:\t8\n\
                  value_size:\t16\nmax_entries:\t65536\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
                  memlock:\t1234\nmap_id:\t77\nfrozen:\t0\n";
        assert_eq!(
            parse_fdinfo_map(fi),
            Some(MapDesc {
                id: 77,
                map_type: 9,
                key_size: 8,
                max_entries: 65536
            })
        );
        // A program fd has no map fields.
        assert_eq!(
            parse_fdinfo_map("pos:\t0\nprog_type:\t26\nprog_id:\t3\n"),
            None
        );
    }
}
