//! Shared by the tests that drive the real `weir` binary: one-shot commands, `weir serve`
//! children that are killed when the test ends however it ends, and waits with deadlines.

#![allow(dead_code, unreachable_pub)]

pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The `weir` binary on one embedded file, run from a directory of the test's own (so a
/// stray `weir.toml` or `weir.db` of the developer's is never picked up).
pub struct Weir {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
}

impl Weir {
    /// A fresh directory; the embedded file is `weir.db` in it (not created yet).
    pub fn new() -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("weir.db");
        Weir { dir, db }
    }

    /// A command for the binary with `--broker sqlite:<db>`, run in the test's directory.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
        c.current_dir(self.dir.path())
            .env_remove("WEIR_BROKER")
            .env_remove("WEIR_STORE")
            .env_remove("WEIR_CONFIG")
            .env_remove("WEIR_LOG")
            .arg("--broker")
            .arg(format!("sqlite:{}", self.db.display()))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs a one-shot command to its end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("weir runs")
    }

    /// Runs a one-shot command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "weir {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command that must print JSON and succeed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("weir {args:?}: {e}: {out}"))
    }

    /// Writes a file into the test's directory; returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Starts `weir serve` with `args` (logs at `warn` unless `args` say otherwise).
    pub fn serve(&self, args: &[&str]) -> Serving {
        let mut c = self.cmd(&[]);
        c.args(["--log", "warn", "serve"])
            .args(args)
            .stdout(Stdio::null());
        Serving {
            child: Some(c.spawn().expect("weir serve starts")),
        }
    }

    /// Starts `weir serve` with `args` (put `--log` in them), collecting its log as it comes.
    pub fn serve_logged(
        &self,
        args: &[&str],
    ) -> (Serving, std::sync::Arc<std::sync::Mutex<String>>) {
        let mut c = self.cmd(&[]);
        c.arg("serve")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        spawn_logged(c)
    }

    /// `weir status --json`.
    pub fn status(&self) -> serde_json::Value {
        self.json(&["status", "--json"])
    }
}

/// A running `weir serve`: SIGKILLed when dropped, so a failed assertion never leaves a
/// worker behind.
pub struct Serving {
    child: Option<Child>,
}

impl Serving {
    /// Guards a `weir serve` child started some other way.
    pub fn guard(child: Child) -> Serving {
        Serving { child: Some(child) }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM (a clean shutdown), then wait (at most `limit`) for the exit status.
    pub fn terminate(mut self, limit: Duration) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                panic!("weir serve did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `HUP`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, at most `limit`; the panic names `what` and
/// the last value seen.
pub fn wait_for<T, L: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Result<T, L>,
) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > limit => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Bytes as text, lossily.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The path as a `&str`.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Starts `c` (its stderr piped) under a [`Serving`] guard, collecting its stderr as it comes.
pub fn spawn_logged(mut c: Command) -> (Serving, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = c.spawn().expect("weir starts");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    (Serving::guard(child), log)
}
