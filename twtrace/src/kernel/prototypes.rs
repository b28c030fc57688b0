//! Function hooks, guarded against kernel drift.
//!
//! A function hook (fentry/fexit) reads its arguments by position, as the kernel passes them:
//! if a kernel changes the function's parameters, the program would read garbage rather than
//! fail. So, as kunai does, every function hook records the prototype it was written against
//! (the `match-proto:` line next to the program in `twtrace-ebpf/src/fnhooks.rs`, repeated in
//! [`FN_HOOKS`]), and before attaching, the running kernel's BTF prototype of that function is
//! rendered the same way and compared: parameter count, each parameter's type and the return
//! type (names may differ). A mismatch, or a function this kernel does not have, disables that
//! hook with a one-line message; the tracepoint tier goes on alone. The loader
//! (`crate::kernel::loader::load`) runs the checks and attaches what passes.

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, BtfType, Type};
use std::path::Path;

/// One function hook: a program in the kernel object, the kernel function it attaches to, and
/// the prototype it expects.
#[derive(Clone, Copy, Debug)]
pub struct FnHook {
    /// Program name in the kernel object.
    pub program: &'static str,
    /// Kernel function (fexit: runs when it returns, with its arguments and return value).
    pub function: &'static str,
    /// The C prototype the program was written against (its `match-proto:` line).
    pub proto: &'static str,
    /// What the hook tells, for the start-up report.
    pub purpose: &'static str,
}

/// The function-hook tier. Prototypes are the same in Linux 6.1, 6.12 and 6.18.
pub const FN_HOOKS: &[FnHook] = &[
    FnHook {
        program: "tw_unique",
        function: "tcp_twsk_unique",
        proto: "int tcp_twsk_unique(struct sock *sk, struct sock *sktw, void *twp)",
        purpose: "every reuse decision of connect(): the socket taken over, the count refused",
    },
    FnHook {
        program: "tw_alloc",
        function: "inet_twsk_alloc",
        proto: "struct inet_timewait_sock *inet_twsk_alloc(const struct sock *sk, \
                struct inet_timewait_death_row *dr, const int state)",
        purpose: "exact overflow: the timewait socket that could not be allocated",
    },
];

/// A C prototype reduced to what the calling convention depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proto {
    pub name: String,
    /// Normalised return type, e.g. `struct inet_timewait_sock *`.
    pub ret: String,
    /// (normalised type, name) of each parameter.
    pub params: Vec<(String, String)>,
}

impl Proto {
    /// The types only: what must match.
    fn shape(&self) -> (String, Vec<&str>) {
        (
            self.ret.clone(),
            self.params.iter().map(|(t, _)| t.as_str()).collect(),
        )
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(t, n)| {
                if t.ends_with('*') {
                    format!("{t}{n}")
                } else {
                    format!("{t} {n}")
                }
            })
            .collect();
        let sep = if self.ret.ends_with('*') { "" } else { " " };
        write!(f, "{}{sep}{}({})", self.ret, self.name, params.join(", "))
    }
}

/// `struct  sock*` → `struct sock *`: one space between words, `*` as separate words.
fn normalise_type(t: &str) -> String {
    t.replace('*', " * ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits a declaration `TYPE NAME` (e.g. `const struct sock *sk`) into its normalised type
/// and its name.
fn split_decl(d: &str) -> Result<(String, String)> {
    let d = d.trim();
    let name_start = d
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let (ty, name) = d.split_at(name_start);
    if name.is_empty() || ty.trim().is_empty() {
        bail!("cannot split `{d}` into a type and a name");
    }
    Ok((normalise_type(ty), name.to_string()))
}

/// Parses a prototype such as `int tcp_twsk_unique(struct sock *sk, void *twp)`.
pub fn parse_proto(s: &str) -> Result<Proto> {
    let open = s.find('(').context("no `(` in prototype")?;
    let close = s.rfind(')').context("no `)` in prototype")?;
    let (ret, name) = split_decl(&s[..open]).with_context(|| format!("prototype `{s}`"))?;
    let inner = s[open + 1..close].trim();
    let mut params = Vec::new();
    if !inner.is_empty() && inner != "void" {
        for p in inner.split(',') {
            params.push(split_decl(p).with_context(|| format!("prototype `{s}`"))?);
        }
    }
    Ok(Proto { name, ret, params })
}

/// Renders a BTF type the way C spells it (typedef names kept, not resolved), normalised.
fn render(btf: &Btf, t: &Type, depth: u32) -> Result<String> {
    if depth > 16 {
        bail!("BTF type chain too deep");
    }
    let name = |x: &dyn BtfType| btf.resolve_name(x).unwrap_or_default();
    let inner = |x: &dyn BtfType| -> Result<String> {
        let next = match x.get_type_id() {
            Some(0) | None => Type::Void,
            Some(id) => btf
                .resolve_type_by_id(id)
                .map_err(|e| anyhow!("BTF type {id}: {e}"))?,
        };
        render(btf, &next, depth + 1)
    };
    Ok(match t {
        Type::Void => "void".into(),
        Type::Int(x) => name(x),
        Type::Float(x) => name(x),
        Type::Typedef(x) => name(x),
        Type::Ptr(x) => normalise_type(&format!("{} *", inner(x)?)),
        Type::Const(x) => format!("const {}", inner(x)?),
        Type::Volatile(x) => format!("volatile {}", inner(x)?),
        Type::Restrict(x) => inner(x)?,
        Type::TypeTag(x) => inner(x)?,
        Type::Struct(x) => format!("struct {}", name(x)),
        Type::Union(x) => format!("union {}", name(x)),
        Type::Enum(x) => format!("enum {}", name(x)),
        Type::Enum64(x) => format!("enum {}", name(x)),
        Type::Fwd(x) => format!(
            "{} {}",
            if x.is_union() { "union" } else { "struct" },
            name(x)
        ),
        Type::Array(x) => format!("{}[]", inner(x)?),
        Type::FuncProto(_) => "fn".into(),
        other => bail!("unexpected BTF type in a prototype: {other:?}"),
    })
}

fn proto_of(btf: &Btf, name: &str, fp: &btf_rs::FuncProto) -> Result<Proto> {
    let ret = match fp.return_type_id() {
        0 => "void".to_string(),
        id => render(
            btf,
            &btf.resolve_type_by_id(id)
                .map_err(|e| anyhow!("BTF type {id}: {e}"))?,
            0,
        )?,
    };
    let mut params = Vec::new();
    for p in &fp.parameters {
        if p.is_variadic() {
            params.push(("...".to_string(), String::new()));
            continue;
        }
        let t = match p.get_type_id() {
            Some(0) | None => Type::Void,
            Some(id) => btf
                .resolve_type_by_id(id)
                .map_err(|e| anyhow!("BTF type {id}: {e}"))?,
        };
        params.push((render(btf, &t, 0)?, btf.resolve_name(p).unwrap_or_default()));
    }
    Ok(Proto {
        name: name.to_string(),
        ret,
        params,
    })
}

/// Every prototype BTF has for function `name` (static functions of the same name in several
/// files each have one).
pub fn kernel_protos(btf: &Btf, name: &str) -> Result<Vec<Proto>> {
    let types = btf.resolve_types_by_name(name).unwrap_or_default();
    let mut out = Vec::new();
    for t in types {
        if let Type::Func(f) = t {
            if let Type::FuncProto(fp) = btf
                .resolve_chained_type(&f)
                .map_err(|e| anyhow!("prototype of {name}: {e}"))?
            {
                out.push(proto_of(btf, name, &fp)?);
            }
        }
    }
    Ok(out)
}

/// Compares `hook`'s expected prototype with the kernel's. `Err` is the one-line reason the
/// hook must stay off.
pub fn check(btf: &Btf, hook: &FnHook) -> std::result::Result<Proto, String> {
    let want = parse_proto(hook.proto).map_err(|e| format!("{e:#}"))?;
    let have = kernel_protos(btf, hook.function).map_err(|e| format!("{e:#}"))?;
    if have.is_empty() {
        return Err(format!(
            "this kernel has no function {} in its BTF (renamed or inlined everywhere)",
            hook.function
        ));
    }
    match have.iter().find(|p| p.shape() == want.shape()) {
        Some(p) => Ok(p.clone()),
        None => Err(format!(
            "signature changed: expected `{want}`, this kernel has `{}`",
            have[0]
        )),
    }
}

/// Number of arguments of BTF-enabled tracepoint `tp` on this kernel (`btf_trace_<tp>` is a
/// pointer to a prototype whose first parameter is the program context), if it exists.
/// Tracepoint arguments are appended across versions (e.g. `kfree_skb` gained `rx_sk`).
pub fn tracepoint_arity(btf: &Btf, tp: &str) -> Option<usize> {
    let types = btf.resolve_types_by_name(&format!("btf_trace_{tp}")).ok()?;
    for t in types {
        let Type::Typedef(td) = t else { continue };
        let Ok(Type::Ptr(p)) = btf.resolve_chained_type(&td) else {
            continue;
        };
        if let Ok(Type::FuncProto(fp)) = btf.resolve_chained_type(&p) {
            return Some(fp.parameters.len().saturating_sub(1));
        }
    }
    None
}

/// Opens the running kernel's BTF for the checks.
pub fn open_kernel_btf() -> Result<Btf> {
    let path = Path::new(crate::kernel::btf::VMLINUX);
    Btf::from_file(path)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("parsing BTF from {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototypes_parse_and_print() {
        let p = parse_proto(FN_HOOKS[1].proto).unwrap();
        assert_eq!(p.name, "inet_twsk_alloc");
        assert_eq!(p.ret, "struct inet_timewait_sock *");
        assert_eq!(
            p.params,
            vec![
                ("const struct sock *".into(), "sk".into()),
                ("struct inet_timewait_death_row *".into(), "dr".into()),
                ("const int".into(), "state".into()),
            ]
        );
        assert_eq!(
            p.to_string(),
            "struct inet_timewait_sock *inet_twsk_alloc(const struct sock *sk, \
             struct inet_timewait_death_row *dr, const int state)"
        );
        let q = parse_proto("void f(void)").unwrap();
        assert!(q.params.is_empty());
        assert_eq!(
            parse_proto("int f(struct sock**pp)").unwrap().params[0].0,
            "struct sock * *"
        );
        assert!(parse_proto("int (").is_err());
        assert!(parse_proto("f(int)").is_err());
    }

    #[test]
    fn names_do_not_matter_types_do() {
        let a = parse_proto("int f(struct sock *sk, void *twp)").unwrap();
        let b = parse_proto("int f(struct sock *s, void *p)").unwrap();
        let c = parse_proto("int f(struct sock *sk, void *twp, int x)").unwrap();
        let d = parse_proto("long f(struct sock *sk, void *twp)").unwrap();
        assert_eq!(a.shape(), b.shape());
        assert_ne!(a.shape(), c.shape());
        assert_ne!(a.shape(), d.shape());
    }

    /// The running kernel (any with BTF) agrees with the recorded prototypes; a deliberately
    /// wrong one is refused with the kernel's actual prototype in the message.
    #[test]
    fn running_kernel_matches_the_recorded_prototypes() {
        let btf = open_kernel_btf().unwrap();
        for h in FN_HOOKS {
            let p = check(&btf, h).unwrap_or_else(|e| panic!("{}: {e}", h.function));
            assert_eq!(p.name, h.function);
        }
        let wrong = FnHook {
            proto: "int tcp_twsk_unique(struct sock *sk, struct sock *sktw)",
            ..FN_HOOKS[0]
        };
        let e = check(&btf, &wrong).unwrap_err();
        assert!(e.contains("signature changed"), "{e}");
        assert!(e.contains("void *"), "{e}");
        let missing = FnHook {
            function: "no_such_function_in_any_kernel",
            ..FN_HOOKS[0]
        };
        assert!(check(&btf, &missing).unwrap_err().contains("no function"));
    }

    #[test]
    fn tracepoint_arities() {
        let btf = open_kernel_btf().unwrap();
        // inet_sock_set_state(sk, oldstate, newstate) since 4.16; timer_cancel(timer) always.
        assert_eq!(tracepoint_arity(&btf, "inet_sock_set_state"), Some(3));
        assert_eq!(tracepoint_arity(&btf, "timer_cancel"), Some(1));
        assert_eq!(tracepoint_arity(&btf, "no_such_tracepoint"), None);
    }
}
