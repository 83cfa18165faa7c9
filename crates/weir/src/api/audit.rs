//! The audit log: every state change asked of the API (who, what, when, and the answer),
//! made or refused by a valid token. The last [`AUDIT_KEEP`] are kept in memory for
//! `GET /api/v1/audit`; with a file ([`Api::audit_log`](super::Api::audit_log), `weir serve
//! --audit-log PATH`) each is also appended to it as one JSON line and synced before the
//! next, and a restart lists the file's last entries again. Each is logged at `info` under the
//! `weir::audit` target too. Requests without a valid token are only logged: anyone could
//! otherwise flush the real changes out of the list.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use weir_core::Timestamp;

use super::ApiState;

/// How many audit entries the API lists (the newest).
pub(crate) const AUDIT_KEEP: usize = 1_000;

/// One state change asked of the API, made or refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// When (ms since the epoch).
    pub at: Timestamp,
    /// Who asked: `admin`, `read` (refused) or `open` (no tokens configured).
    pub who: String,
    /// The method and path, e.g. `POST /api/v1/jobs/…/retry`.
    pub what: String,
    /// The response status.
    pub status: u16,
}

/// The entries kept, and the file they are appended to, if any.
#[derive(Default)]
pub(crate) struct AuditLog {
    recent: parking_lot::Mutex<VecDeque<AuditEntry>>,
    file: Option<Arc<std::sync::Mutex<std::fs::File>>>,
}

impl AuditLog {
    /// A log appended to `path` (created 0600 if missing), listing its last entries. A line
    /// that is not an entry (a torn last write, an edit) is skipped with a warning.
    pub(crate) fn open(path: &Path) -> std::io::Result<AuditLog> {
        let mut recent = VecDeque::new();
        if let Ok(f) = std::fs::File::open(path) {
            for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line?;
                match serde_json::from_str::<AuditEntry>(&line) {
                    Ok(e) => {
                        if recent.len() == AUDIT_KEEP {
                            recent.pop_front();
                        }
                        recent.push_back(e);
                    }
                    Err(e) if !line.trim().is_empty() => tracing::warn!(
                        file = %path.display(),
                        line = n + 1,
                        error = %e,
                        "audit log: a line that is not an entry is skipped"
                    ),
                    Err(_) => {}
                }
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        // A last line cut short (a crash mid-write) is ended here, so the next entry starts
        // a line of its own instead of joining the fragment.
        let len = file.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8];
            let mut reader = std::fs::File::open(path)?;
            reader.seek(SeekFrom::Start(len - 1))?;
            reader.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(AuditLog {
            recent: parking_lot::Mutex::new(recent),
            file: Some(Arc::new(std::sync::Mutex::new(file))),
        })
    }

    /// Records `entry`: in the list at once, and in the file (on a blocking thread) before
    /// this returns. A failed write is logged at `error`, the change itself stands.
    pub(crate) async fn record(&self, entry: AuditEntry) {
        {
            let mut recent = self.recent.lock();
            if recent.len() == AUDIT_KEEP {
                recent.pop_front();
            }
            recent.push_back(entry.clone());
        }
        let Some(file) = self.file.clone() else {
            return;
        };
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
            line.push(b'\n');
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(&line)?;
            f.sync_data()
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit log: an entry could not be written"),
            Err(e) => tracing::error!(error = %e, "audit log: the writer failed"),
        }
    }

    fn newest_first(&self) -> Vec<AuditEntry> {
        self.recent.lock().iter().rev().cloned().collect()
    }
}

/// `GET /api/v1/audit`: the last entries, newest first.
pub(crate) async fn list(State(st): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "entries": st.audit.newest_first() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u16) -> AuditEntry {
        AuditEntry {
            at: Timestamp(i64::from(n)),
            who: "admin".into(),
            what: format!("POST /api/v1/jobs/{n}/retry"),
            status: 200,
        }
    }

    #[tokio::test]
    async fn entries_outlive_a_restart_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for n in 0..3 {
            log.record(entry(n)).await;
        }
        drop(log);
        // A write cut short by a crash.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"at\":9,\"who\":\"adm")
            .unwrap();
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.newest_first(), vec![entry(2), entry(1), entry(0)]);
        // The next entry after the fragment is kept too.
        log.record(entry(3)).await;
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.newest_first()[0], entry(3));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
