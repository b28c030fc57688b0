//! What the binary's integration tests share.

#![allow(dead_code)] // each test file uses part of it

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for what a recorder should do in milliseconds to a couple of seconds.
const SOON: Duration = Duration::from_secs(20);

/// A directory removed when dropped, named for the test (`tag`) and this process.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("twtrace-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `twtrace record`, killed if the test fails before stopping it.
pub struct Recorder {
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    /// Starts `twtrace record ARGS` and returns once it says it is recording.
    pub fn start(args: &[&str]) -> Recorder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_twtrace"))
            .arg("record")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning twtrace");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel::<()>();
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let ready = line.starts_with("recording to ");
                lines.lock().unwrap().push(line);
                if ready {
                    let _ = tx.send(());
                }
            }
        });
        let r = Recorder {
            child: Some(child),
            stderr,
        };
        r.wait_ready(rx);
        r
    }

    fn wait_ready(&self, rx: Receiver<()>) {
        if rx.recv_timeout(SOON).is_err() {
            panic!("twtrace record did not start: {:#?}", self.stderr());
        }
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&mut self, sig: libc::c_int) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// SIGINT, then a bounded wait for a clean exit.
    pub fn stop(&mut self) {
        self.signal(libc::SIGINT);
        assert!(self.wait(), "twtrace record failed: {:#?}", self.stderr());
    }

    /// Waits (bounded) for the recorder to exit; returns whether it exited successfully.
    pub fn wait(&mut self) -> bool {
        let deadline = Instant::now() + SOON;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                // Give the stderr thread a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status.success();
            }
            assert!(Instant::now() < deadline, "twtrace record did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
