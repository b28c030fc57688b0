//! The panic messages of failed tests, collected from libtest's output (the host's `cargo
//! test`, a guest's console) to be repeated in one line each at the very end of a long run:
//! CI keeps only the tail of the output, and "FAILED verify::…" alone does not say which
//! assertion failed or with what values.

/// Of a long panic message (its lines joined) the start (where, and the assertion) and the end
/// (an `assert_eq!`'s left and right come last, after any dump) are kept, this many bytes each:
/// short enough that several failures still fit in the tail CI keeps.
const KEEP_HEAD: usize = 240;
const KEEP_TAIL: usize = 240;
/// What stands for the bytes left out between them.
const ELIDED: &str = " … ";
/// At most this many panics are kept per run (the first ones).
const MAX_PANICS: usize = 12;

/// One test's panic: the thread (the test's name), where, and the message in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    pub test: String,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Panics {
    pub found: Vec<Panic>,
    /// Still reading the message of the last panic found.
    open: bool,
}

impl Panics {
    /// Feeds one line of libtest output.
    pub fn feed(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(at) = line.find("panicked at ") {
            self.open = false;
            if self.found.len() >= MAX_PANICS {
                return;
            }
            // `thread 'name' panicked at file:line:col:` (name may be `<unnamed>`).
            let test = line[..at]
                .split_once("thread '")
                .and_then(|(_, t)| t.split_once('\''))
                .map_or("?", |(t, _)| t)
                .to_string();
            let text = line[at + "panicked at ".len()..].to_string();
            self.found.push(Panic { test, text });
            self.open = true;
            return;
        }
        if !self.open {
            return;
        }
        let t = line.trim();
        let ends = t.is_empty()
            || t.starts_with("note: ")
            || t.starts_with("stack backtrace")
            || t.starts_with("---- ")
            || t.starts_with("failures:")
            || t.starts_with("test ")
            || t.contains("TWVM-");
        if ends {
            self.open = false;
            return;
        }
        let p = self.found.last_mut().expect("open implies one found");
        p.text.push(' ');
        p.text.push_str(t);
        squeeze(&mut p.text);
    }

    /// Prints each panic as one line under a heading naming where they came from.
    pub fn print(&self, whence: &str) {
        if self.found.is_empty() {
            return;
        }
        eprintln!("xtask: why the tests failed ({whence}):");
        for p in &self.found {
            eprintln!("   {}: {}", p.test, p.text);
        }
    }
}

/// Keeps the first [`KEEP_HEAD`] and the last [`KEEP_TAIL`] bytes of `s` (at character
/// boundaries), [`ELIDED`] between them. Applied after every line added, so a message of any
/// length costs no more than that (the head, marker included, stays as it was).
fn squeeze(s: &mut String) {
    if s.len() <= KEEP_HEAD + ELIDED.len() + KEEP_TAIL {
        return;
    }
    // Squeezed before: the head ends where the marker starts.
    let mut head = match s
        .get(..KEEP_HEAD + ELIDED.len())
        .and_then(|h| h.find(ELIDED))
    {
        Some(h) => h,
        None => KEEP_HEAD,
    };
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - KEEP_TAIL;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    let end = s.split_off(tail);
    s.truncate(head);
    s.truncate(s.trim_end().len());
    s.push_str(ELIDED);
    s.push_str(end.trim_start());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_panic_message() {
        let out = "running 2 tests\n\
                   test a ... ok\n\
                   ---- verify_x stdout ----\n\
                   twtrace verify:\n\
                   thread 'verify_x' panicked at tests/tests/verify.rs:124:5:\n\
                   armed {\n  \"n\": 3\n}\n\
                   note: run with `RUST_BACKTRACE=1`\n\
                   \n\
                   thread '<unnamed>' panicked at src/a.rs:1:2:\n\
                   boom\n\
                   \n\
                   failures:\n    verify_x\n";
        let mut p = Panics::default();
        for l in out.lines() {
            p.feed(l);
        }
        assert_eq!(
            p.found,
            vec![
                Panic {
                    test: "verify_x".into(),
                    text: "tests/tests/verify.rs:124:5: armed { \"n\": 3 }".into()
                },
                Panic {
                    test: "<unnamed>".into(),
                    text: "src/a.rs:1:2: boom".into()
                },
            ]
        );
    }

    #[test]
    fn long_messages_and_many_panics_are_bounded() {
        let mut p = Panics::default();
        for i in 0..20 {
            p.feed(&format!("[  1.0] thread 't{i}' panicked at f.rs:1:1:"));
            for _ in 0..500 {
                p.feed("ééééééé");
            }
        }
        assert_eq!(p.found.len(), MAX_PANICS);
        for f in &p.found {
            assert!(
                f.text.len() <= KEEP_HEAD + ELIDED.len() + KEEP_TAIL,
                "{}",
                f.text.len()
            );
            assert!(f.text.starts_with("f.rs:1:1: éé"), "{}", f.text);
            assert_eq!(f.text.matches(ELIDED).count(), 1, "{}", f.text);
            assert!(!f.text.contains("  "), "{}", f.text);
        }
        assert_eq!(p.found[3].test, "t3");
    }

    #[test]
    fn an_assertions_values_after_a_long_dump_are_kept() {
        let mut p = Panics::default();
        p.feed("thread 'x' panicked at tests/tests/w.rs:9:5:");
        p.feed("assertion `left == right` failed: [");
        for i in 0..10_000 {
            p.feed(&format!("    Event {{ ts_ns: {i} }},"));
        }
        p.feed("]");
        p.feed("  left: 7");
        p.feed(" right: 8");
        p.feed("");
        let text = &p.found[0].text;
        assert!(
            text.starts_with("tests/tests/w.rs:9:5: assertion `left == right` failed: ["),
            "{text}"
        );
        assert!(text.ends_with("] left: 7 right: 8"), "{text}");
        assert!(text.len() <= KEEP_HEAD + ELIDED.len() + KEEP_TAIL);
    }
}
