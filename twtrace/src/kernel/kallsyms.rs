//! Symbol addresses from `/proc/kallsyms`.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};

/// Finds the address of each wanted symbol in kallsyms text. Returns `None` for symbols not
/// present. Errors when every address reads as zero: `kptr_restrict` hides them from
/// unprivileged readers.
pub fn lookup<R: Read>(text: R, wanted: &[&str]) -> Result<Vec<Option<u64>>> {
    let mut found = vec![None; wanted.len()];
    let mut any_nonzero = false;
    for line in BufReader::new(text).lines() {
        let line = line.context("reading kallsyms")?;
        let mut it = line.split_ascii_whitespace();
        let (Some(addr), Some(_ty), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        any_nonzero |= addr != 0;
        if let Some(i) = wanted.iter().position(|w| *w == name) {
            // Module symbols carry a `[module]` column; the first (core kernel) one wins.
            if found[i].is_none() {
                found[i] = Some(addr);
            }
        }
    }
    if !any_nonzero {
        bail!(
            "/proc/kallsyms shows only zero addresses: the kernel hides them \
             (kernel.kptr_restrict). Run twtrace as root (sudo), or with CAP_SYSLOG."
        );
    }
    Ok(found)
}

pub fn lookup_running(wanted: &[&str]) -> Result<Vec<Option<u64>>> {
    let f = std::fs::File::open("/proc/kallsyms").context("opening /proc/kallsyms")?;
    lookup(f, wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_symbols_and_ignores_garbage() {
        let text = "ffffffff82008620 T inet_twsk_put\n\
                    garbage line\n\
                    ffffffff820089f0 t tw_timer_handler\n\
                    ffffffffc0000000 t tw_timer_handler\t[somemod]\n";
        let r = lookup(text.as_bytes(), &["tw_timer_handler", "missing"]).unwrap();
        assert_eq!(r, vec![Some(0xffffffff820089f0), None]);
    }

    #[test]
    fn all_zero_addresses_mean_restricted() {
        let text = "0000000000000000 T a\n0000000000000000 t tw_timer_handler\n";
        let e = lookup(text.as_bytes(), &["tw_timer_handler"]).unwrap_err();
        assert!(e.to_string().contains("kptr_restrict"));
    }
}
