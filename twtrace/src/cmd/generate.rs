//! `twtrace generate …` (hidden): man pages and shell completions generated from the clap
//! definitions of this very binary, so they never drift from the CLI. `cargo xtask dist` runs
//! it on the release binary it packages (xtask itself cannot link the twtrace library: its
//! build needs the BPF toolchain).

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Man pages, section 8: `twtrace.8` and one per (nested) subcommand, e.g.
    /// `twtrace-report.8`, `twtrace-lab-nat.8`.
    Man {
        /// Directory to write the pages to (created if missing).
        dir: PathBuf,
    },
    /// Shell completions: `twtrace.bash`, `_twtrace` (zsh), `twtrace.fish`, …
    Completions {
        /// Directory to write the scripts to (created if missing).
        dir: PathBuf,
        /// Only these shells (default: bash, zsh and fish).
        #[arg(long = "shell", value_enum)]
        shells: Vec<clap_complete::Shell>,
    },
}

pub fn run(args: GenerateArgs) -> Result<()> {
    match args.what {
        What::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for p in man_pages(&dir)? {
                println!("{}", p.display());
            }
        }
        What::Completions { dir, shells } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let shells = if shells.is_empty() {
                vec![
                    clap_complete::Shell::Bash,
                    clap_complete::Shell::Zsh,
                    clap_complete::Shell::Fish,
                ]
            } else {
                shells
            };
            for sh in shells {
                let mut cmd = visible(crate::Cli::command());
                let p = clap_complete::generate_to(sh, &mut cmd, "twtrace", &dir).with_context(
                    || {
                        format!(
                            "writing {} completions",
                            sh.to_possible_value().unwrap().get_name()
                        )
                    },
                )?;
                println!("{}", p.display());
            }
        }
    }
    Ok(())
}

/// The command without its hidden subcommands (this one): clap_complete offers them too.
fn visible(full: clap::Command) -> clap::Command {
    let mut cmd = clap::Command::new("twtrace")
        .version(env!("CARGO_PKG_VERSION"))
        .args_conflicts_with_subcommands(full.is_args_conflicts_with_subcommands_set());
    if let Some(a) = full.get_about() {
        cmd = cmd.about(a.clone());
    }
    if let Some(a) = full.get_long_about() {
        cmd = cmd.long_about(a.clone());
    }
    for a in full.get_arguments() {
        cmd = cmd.arg(a.clone());
    }
    for s in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        cmd = cmd.subcommand(s.clone());
    }
    cmd
}

/// Writes the pages, the visible subcommands' recursively (hidden ones, like this one, and
/// `help` are left out); returns their paths, parent first.
fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let date = date();
    let mut out = Vec::new();
    fn walk(cmd: &clap::Command, dir: &Path, date: &str, out: &mut Vec<PathBuf>) -> Result<()> {
        let man = clap_mangen::Man::new(cmd.clone())
            .section("8")
            .date(date)
            .manual("System Administration");
        let p = man
            .generate_to(dir)
            .with_context(|| format!("writing {}", man.get_filename()))?;
        out.push(p);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, dir, date, out)?;
        }
        Ok(())
    }
    walk(&cmd, dir, &date, &mut out)?;
    Ok(out)
}

/// The pages' date: `SOURCE_DATE_EPOCH` when set (reproducible builds; `cargo xtask dist`
/// sets it to the commit's time), otherwise today (UTC), as `YYYY-MM-DD`.
fn date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
