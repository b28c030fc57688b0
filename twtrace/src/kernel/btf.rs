//! Kernel structure offsets from BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so userspace resolves every field the kernel programs
//! read and passes the byte offsets in as a read-only global. A member path such as
//! `skc_net.net` walks nested members; anonymous structs and unions are searched through, as C
//! does. Bitfields and members that do not start on a byte are refused: the programs read whole
//! bytes.

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, BtfType, Struct, Type};
use std::path::Path;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self> {
        let btf = Btf::from_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("parsing BTF from {}", path.display()))?;
        Ok(Self { btf })
    }

    /// The parsed BTF itself (for the function hooks' prototype checks).
    pub fn raw(&self) -> &Btf {
        &self.btf
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let btf = Btf::from_bytes(bytes).map_err(|e| anyhow!("parsing BTF: {e}"))?;
        Ok(Self { btf })
    }

    /// The definition of `struct NAME` (a forward declaration does not count).
    fn struct_named(&self, name: &str) -> Result<Struct> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| anyhow!("BTF has no type named `{name}`: {e}"))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("BTF has no struct `{name}` with members"))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut t: Type) -> Result<Type> {
        loop {
            t = match t {
                Type::Typedef(ref x) => self.chained(x)?,
                Type::Volatile(ref x) => self.chained(x)?,
                Type::Const(ref x) => self.chained(x)?,
                Type::Restrict(ref x) => self.chained(x)?,
                Type::TypeTag(ref x) => self.chained(x)?,
                other => return Ok(other),
            }
        }
    }

    fn chained<T: BtfType + ?Sized>(&self, x: &T) -> Result<Type> {
        self.btf
            .resolve_chained_type(x)
            .map_err(|e| anyhow!("resolving BTF type: {e}"))
    }

    /// Bit offset of member `name` inside `s`, searching anonymous members too.
    fn find_member(&self, s: &Struct, name: &str) -> Result<Option<(u32, Type, bool)>> {
        for m in &s.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if mname == name {
                let t = self.strip(self.chained(m)?)?;
                let bitfield = m.bitfield_size().is_some_and(|b| b != 0);
                return Ok(Some((m.bit_offset(), t, bitfield)));
            }
            if mname.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = self.strip(self.chained(m)?)? {
                    if let Some((off, t, bf)) = self.find_member(&inner, name)? {
                        return Ok(Some((m.bit_offset() + off, t, bf)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of `path` (dot-separated members) inside `struct strukt`.
    pub fn offset(&self, strukt: &str, path: &str) -> Result<u32> {
        self.try_offset(strukt, path)?
            .ok_or_else(|| anyhow!("struct {strukt} has no member `{path}` on this kernel"))
    }

    /// Like [`offset`](Self::offset), but `Ok(None)` when the member does not exist (fields
    /// that only some kernel versions have, e.g. `tw_entry_stamp`).
    pub fn try_offset(&self, strukt: &str, path: &str) -> Result<Option<u32>> {
        let mut s = self.struct_named(strukt)?;
        let mut bits = 0u32;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Some((off, t, bitfield)) = self.find_member(&s, part)? else {
                return Ok(None);
            };
            if bitfield {
                bail!("{strukt}.{path}: `{part}` is a bitfield; the programs read whole bytes");
            }
            bits += off;
            if i + 1 < parts.len() {
                s = match t {
                    Type::Struct(x) | Type::Union(x) => x,
                    _ => bail!("{strukt}.{path}: `{part}` is not a struct or union"),
                };
            }
        }
        if !bits.is_multiple_of(8) {
            bail!("{strukt}.{path} is not byte-aligned (bit offset {bits})");
        }
        Ok(Some(bits / 8))
    }

    /// Value of enumerator `name` in `enum enum_name` (e.g. a drop reason), if present.
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Option<i64> {
        self.enum_members(enum_name)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Every enumerator of `enum enum_name` with its value (empty if there is no such enum).
    pub fn enum_members(&self, enum_name: &str) -> Vec<(String, i64)> {
        let Ok(types) = self.btf.resolve_types_by_name(enum_name) else {
            return Vec::new();
        };
        for t in types {
            match t {
                Type::Enum(e) => {
                    return e
                        .members
                        .iter()
                        .map(|m| {
                            let v = if e.is_signed() {
                                m.val() as i32 as i64
                            } else {
                                m.val() as i64
                            };
                            (self.btf.resolve_name(m).unwrap_or_default(), v)
                        })
                        .collect()
                }
                Type::Enum64(e) => {
                    return e
                        .members
                        .iter()
                        .map(|m| (self.btf.resolve_name(m).unwrap_or_default(), m.val() as i64))
                        .collect()
                }
                _ => {}
            }
        }
        Vec::new()
    }

    /// Whether the kernel's BTF names a type or function `name` (e.g. `btf_trace_timer_start`).
    pub fn has_type(&self, name: &str) -> bool {
        self.btf
            .resolve_ids_by_name(name)
            .is_ok_and(|ids| !ids.is_empty())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hand-made BTF blob:
    /// ```c
    /// struct inner { int a; int b; };
    /// typedef struct inner inner_t;
    /// struct outer {
    ///     int first;
    ///     union { int u1; struct inner; };   /* anonymous, at byte 8 */
    ///     inner_t nested;                     /* at byte 16 */
    ///     unsigned int flag: 1;               /* bitfield, at byte 24 */
    /// };
    /// ```
    pub(crate) fn synthetic_btf() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0inner_t\0u1\0outer\0first\0nested\0flag\0";
        let s = |name: &str| -> u32 {
            if name.is_empty() {
                return 0;
            }
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u32> = Vec::new();
        let info = |kind: u32, vlen: u32, kflag: u32| (kflag << 31) | (kind << 24) | vlen;
        // 1: int
        t.extend([s("int"), info(1, 0, 0), 4, (1 << 24) | 32]);
        // 2: struct inner {a, b}
        t.extend([s("inner"), info(4, 2, 0), 8]);
        t.extend([s("a"), 1, 0, s("b"), 1, 32]);
        // 3: typedef inner_t -> 2
        t.extend([s("inner_t"), info(8, 0, 0), 2]);
        // 4: anonymous union { int u1; struct inner; }
        t.extend([0, info(5, 2, 0), 8]);
        t.extend([s("u1"), 1, 0, 0, 2, 0]);
        // 5: struct outer (kind_flag=1: member offsets carry bitfield sizes)
        t.extend([s("outer"), info(4, 4, 1), 32]);
        t.extend([
            s("first"),
            1,
            0,
            0,
            4,
            64,
            s("nested"),
            3,
            128,
            s("flag"),
            1,
            (1 << 24) | 192,
        ]);
        let types: Vec<u8> = t.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(0xEB9F_u16.to_le_bytes());
        out.extend([1u8, 0u8]);
        out.extend(24u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((strings.len() as u32).to_le_bytes());
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn resolves_nested_anonymous_and_typedef_members() {
        let btf = KernelBtf::from_bytes(&synthetic_btf()).unwrap();
        assert_eq!(btf.offset("outer", "first").unwrap(), 0);
        assert_eq!(btf.offset("outer", "u1").unwrap(), 8);
        assert_eq!(btf.offset("outer", "a").unwrap(), 8);
        assert_eq!(btf.offset("outer", "b").unwrap(), 12);
        assert_eq!(btf.offset("outer", "nested.b").unwrap(), 20);
        assert_eq!(btf.offset("inner", "b").unwrap(), 4);
    }

    #[test]
    fn missing_members_and_bitfields_are_reported() {
        let btf = KernelBtf::from_bytes(&synthetic_btf()).unwrap();
        assert_eq!(btf.try_offset("outer", "nope").unwrap(), None);
        let e = btf.offset("outer", "nested.zz").unwrap_err().to_string();
        assert!(e.contains("no member"), "{e}");
        let e = btf.offset("outer", "flag").unwrap_err().to_string();
        assert!(e.contains("bitfield"), "{e}");
        assert!(btf.offset("nostruct", "a").is_err());
        assert!(btf.offset("outer", "first.x").is_err());
    }

    #[test]
    fn running_kernel_offsets_match_stable_abi() {
        // These layouts have not moved in a decade on 64-bit kernels; if parsing were off by
        // anything they would not come out right.
        let btf = KernelBtf::open(Path::new(VMLINUX)).expect("kernel BTF");
        assert_eq!(btf.offset("sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(btf.offset("sock_common", "skc_rcv_saddr").unwrap(), 4);
        assert_eq!(btf.offset("sock_common", "skc_dport").unwrap(), 12);
        assert_eq!(btf.offset("sock_common", "skc_num").unwrap(), 14);
        assert_eq!(btf.offset("timer_list", "expires").unwrap(), 16);
        assert_eq!(btf.offset("inet_timewait_sock", "__tw_common").unwrap(), 0);
        // Values fixed by the kernel ABI (linux/tcp.h); an unknown name is None.
        assert_eq!(btf.enum_value("tcp_ca_state", "TCP_CA_Open"), Some(0));
        assert_eq!(btf.enum_value("tcp_ca_state", "TCP_CA_Loss"), Some(4));
        assert_eq!(btf.enum_value("tcp_ca_state", "nope"), None);
    }
}
