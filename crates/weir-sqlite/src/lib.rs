//! weir's embedded durable broker: one SQLite file, no server.
//!
//! - **Durable by default.** An enqueue or settle returns once its transaction committed with
//!   `synchronous=FULL` in WAL mode (fsync of the log). [`Synchronous::Normal`] is the opt-in
//!   relaxed mode: commits survive a crash of the process but not of the machine.
//! - **Group commit.** One writer thread drains every queued command into one transaction, so
//!   the cost of an fsync is shared by all the enqueues, leases and settles that arrived while
//!   the previous one ran.
//! - **Ready order in memory.** Runnable jobs are ordered in a [`weir_core::ReadyIndex`] held by
//!   the writer; on disk only unfinished rows are indexed. Other processes that write the same
//!   file (a `weir enqueue` beside a `weir serve`) are noticed by polling, every
//!   [`SqliteOptions::poll_interval`].
//! - **Leases with fencing.** A lease carries its attempt; a settle or heartbeat from an older
//!   attempt matches no row and is reported [`SettleOutcome::Stale`]. Expired leases are reclaimed
//!   with the attempt counted.
//!
//! The format and its invariants are in docs/embedded-format.md.

mod apply;
mod checkpoint;
mod codes;
mod commands;
mod inspect;
mod ops;
mod rows;
mod schema;
mod search;
mod store;
mod writer;

pub use store::SqliteStore;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;
use weir_core::{
    check_new_jobs, Broker, BrokerError, Capabilities, Capability, Clock, Delivery, Enqueued,
    FetchRequest, Inspect, InvalidUrl, JobLimits, JobState, Lease, NewJob, SettleOutcome,
    Settlement, SystemClock, Timestamp, WorkerStatus,
};

use crate::commands::{Cmd, Fetch};
use crate::writer::Writer;

/// Rows one purge window looks at: a few milliseconds of the writer's time if it deletes them
/// all, a fraction of one if it deletes none.
const PURGE_WINDOW: usize = 2_000;

/// How hard a commit is pushed to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync on every commit: a returned enqueue or settle survives power loss. The default.
    #[default]
    Full,
    /// No fsync on commit (WAL `synchronous=NORMAL`): survives a crash of weir, but the last
    /// commits may be lost if the machine loses power. Opt-in, for throughput over safety.
    Normal,
}

/// Where and how to open the embedded broker.
#[derive(Clone)]
pub struct SqliteOptions {
    path: PathBuf,
    synchronous: Synchronous,
    poll_interval: Duration,
    clock: Arc<dyn Clock>,
    limits: JobLimits,
    faults: Option<Arc<std::sync::atomic::AtomicU32>>,
}

impl std::fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .field("poll_interval", &self.poll_interval)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl SqliteOptions {
    /// Options for the file at `path` (created if missing), with the defaults below.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            poll_interval: Duration::from_millis(100),
            clock: Arc::new(SystemClock),
            limits: JobLimits::default(),
            faults: None,
        }
    }

    /// Fault injection, for tests of what callers see when the store fails: while `faults`
    /// is above zero, each commit round of this handle's writer takes one from it and is
    /// rolled back as a failed write would be (every command in it answered with a transient
    /// error, nothing of it written). Not for production use.
    #[doc(hidden)]
    pub fn inject_commit_faults(mut self, faults: Arc<std::sync::atomic::AtomicU32>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Parses `sqlite:PATH` or `sqlite://PATH`, with optional query parameters `sync=full` or
    /// `sync=normal` (see [`Synchronous`]) and `max_payload=BYTES` (see
    /// [`JobLimits::max_payload`]). An unknown parameter is an error.
    ///
    /// ```
    /// use weir_sqlite::{SqliteOptions, Synchronous};
    /// let o = SqliteOptions::from_url("sqlite:./weir.db?sync=normal").unwrap();
    /// assert_eq!(o.path().to_str(), Some("./weir.db"));
    /// assert_eq!(o.synchronous_mode(), Synchronous::Normal);
    /// assert!(SqliteOptions::from_url("sqlite:").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, InvalidUrl> {
        let bad = |why: String| InvalidUrl::new(url, why);
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| bad("not a sqlite URL (expected sqlite:PATH)".into()))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(bad("names no file (expected sqlite:PATH)".into()));
        }
        let mut o = SqliteOptions::new(path);
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("sync", "full")) => o.synchronous = Synchronous::Full,
                Some(("sync", "normal")) => o.synchronous = Synchronous::Normal,
                Some(("sync", v)) => {
                    return Err(bad(format!("sync must be `full` or `normal`, not `{v}`")))
                }
                Some(("max_payload", v)) => match v.parse::<usize>() {
                    Ok(n) if n > 0 && n <= MAX_PAYLOAD_LIMIT => o.limits.max_payload = n,
                    _ => {
                        return Err(bad(format!(
                            "max_payload must be a number of bytes from 1 to {MAX_PAYLOAD_LIMIT} \
                             (a payload and its result must fit in one SQLite row of at most 1 GB), not `{v}`"
                        )))
                    }
                },
                _ => {
                    return Err(bad(format!(
                        "unknown parameter `{pair}` (known: sync, max_payload)"
                    )))
                }
            }
        }
        Ok(o)
    }

    /// Sets the limits on new jobs. By default, [`JobLimits::default`]. A `max_payload` above
    /// [`MAX_PAYLOAD_LIMIT`] is lowered to it.
    pub fn limits(mut self, mut limits: JobLimits) -> Self {
        limits.max_payload = limits.max_payload.min(MAX_PAYLOAD_LIMIT);
        self.limits = limits;
        self
    }

    /// Sets the commit durability. By default, [`Synchronous::Full`].
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }

    /// How often the writer looks for jobs written by other processes and for expired leases.
    /// By default, 100 ms.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d.max(Duration::from_millis(1));
        self
    }

    /// The clock job times are read from. By default, the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The commit durability.
    pub fn synchronous_mode(&self) -> Synchronous {
        self.synchronous
    }
}

struct Shared {
    tx: Option<flume::Sender<Cmd>>,
    /// Dropped to stop the checkpoint thread.
    checkpoint_stop: Option<flume::Sender<()>>,
    checkpointer: Option<JoinHandle<()>>,
    opts: SqliteOptions,
    readers: Mutex<Vec<Connection>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its last round; wait so the file is closed
        // (and orphaned leases given back) when the broker is gone.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.checkpoint_stop.take();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }
}

/// The embedded broker. Cloning is cheap and shares one writer.
#[derive(Clone)]
pub struct SqliteBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("path", &self.shared.opts.path)
            .finish_non_exhaustive()
    }
}

/// The largest `max_payload` the embedded broker accepts: a payload and a result (the
/// runtime fails a job whose result is over `max_payload`) fit together under SQLite's limit
/// on one row (1,000,000,000 bytes), so a validated job is always stored. That is what keeps
/// one job from failing a whole commit round: a round rolls back only on the store's own
/// errors (I/O, a full disk), which every command of it shares anyway.
pub const MAX_PAYLOAD_LIMIT: usize = 400_000_000;

fn open_conn(opts: &SqliteOptions) -> rusqlite::Result<Connection> {
    create_private(&opts.path);
    let conn = Connection::open_with_flags(
        &opts.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Turning a fresh file to WAL takes an exclusive lock, and SQLite answers BUSY at once
    // there, without the busy handler: workers started together on a new file would fail.
    // So this one statement waits for the lock itself, as long as the busy timeout.
    let start = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(10 + rand_jitter_ms()));
            }
            other => break other?,
        }
    }
    conn.pragma_update(
        None,
        "synchronous",
        match opts.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates the file, if it does not exist, readable and writable by its owner only (0600):
/// it holds every payload. SQLite gives its `-wal` and `-shm` files the same mode. Failure
/// is left to the open that follows, which reports it.
fn create_private(path: &std::path::Path) {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let _ = o.open(path);
}

/// 0–19 ms, from the clock's nanoseconds: enough to keep processes that collide from
/// colliding again in step (not worth a random-number crate here).
fn rand_jitter_ms() -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            % 20,
    )
}

fn store_err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl SqliteBroker {
    /// Opens (or creates) the file at `path` with default options. See [`SqliteBroker::open_with`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, BrokerError> {
        Self::open_with(SqliteOptions::new(path))
    }

    /// Opens (or creates) the file, migrates its schema and loads the ready order of its
    /// unfinished jobs, then starts the writer thread. Blocking: call it before or outside the
    /// async runtime's hot path (it reads every unfinished row once).
    pub fn open_with(opts: SqliteOptions) -> Result<Self, BrokerError> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                BrokerError::Invalid(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let mut conn = open_conn(&opts).map_err(|e| {
            BrokerError::Invalid(format!("cannot open {}: {e}", opts.path.display()))
        })?;
        schema::migrate(&mut conn)
            .map_err(|e| BrokerError::Invalid(format!("{}: {e}", opts.path.display())))?;
        // Checkpoints run on their own thread (see `checkpoint`), not inside a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| BrokerError::Invalid(format!("{}: {e}", opts.path.display())))?;
        let mut writer = Writer::new(conn, opts.clock.clone(), opts.poll_interval)
            .map_err(|e| BrokerError::Invalid(format!("{}: {e}", opts.path.display())))?;
        writer.faults = opts.faults.clone();
        let ckpt_conn = open_conn(&opts).map_err(|e| {
            BrokerError::Invalid(format!("cannot open {}: {e}", opts.path.display()))
        })?;
        let (checkpoint_stop, stop_rx) = flume::bounded(1);
        let checkpointer = std::thread::Builder::new()
            .name("weir-sqlite-checkpoint".into())
            .spawn(move || checkpoint::run(ckpt_conn, stop_rx))
            .map_err(|e| BrokerError::Other(format!("cannot start the checkpoint thread: {e}")))?;
        let (tx, rx) = flume::bounded(8192);
        let thread = std::thread::Builder::new()
            .name("weir-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| BrokerError::Other(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteBroker {
            shared: Arc::new(Shared {
                tx: Some(tx),
                checkpoint_stop: Some(checkpoint_stop),
                checkpointer: Some(checkpointer),
                opts,
                readers: Mutex::new(Vec::new()),
                thread: Some(thread),
            }),
        })
    }

    /// A workflow store in this broker's file (see [`SqliteStore::beside`]).
    pub fn store(&self) -> Result<SqliteStore, BrokerError> {
        SqliteStore::beside(&self.shared.opts)
    }

    /// The options it was opened with.
    pub fn options(&self) -> &SqliteOptions {
        &self.shared.opts
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, BrokerError>>) -> Cmd,
    ) -> Result<T, BrokerError> {
        let (tx, rx) = oneshot::channel();
        let sender = self.shared.tx.as_ref().ok_or(BrokerError::Closed)?;
        sender
            .send_async(make(tx))
            .await
            .map_err(|_| BrokerError::Closed)?;
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    /// A purge, one window of [`PURGE_WINDOW`] rows per writer command, so enqueues, fetches
    /// and settles are held up for one window at most, not for the whole purge. Cancel
    /// safety: a purge dropped between windows stops there, having deleted whole windows.
    async fn purge_windowed(
        &self,
        state: JobState,
        queue: Option<String>,
        before: Option<Timestamp>,
    ) -> Result<u64, BrokerError> {
        let (mut total, mut after) = (0, 0);
        loop {
            let window = commands::Purge {
                state,
                queue: queue.clone(),
                before,
                after,
                window: PURGE_WINDOW,
            };
            let done = self.call(|r| Cmd::Purge(window, r)).await?;
            total += done.deleted;
            match done.next {
                Some(next) => after = next,
                None => return Ok(total),
            }
        }
    }

    /// Runs `f` on a read connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let conn = shared.readers.lock().pop();
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&shared.opts).map_err(store_err)?,
            };
            let r = f(&conn).map_err(store_err);
            shared.readers.lock().push(conn);
            r
        })
        .await
        .map_err(|e| BrokerError::Other(format!("read task failed: {e}")))?
    }
}

/// What the embedded broker declares: everything but queue depths (it has [`Inspect`], which
/// says more).
const CAPABILITIES: Capabilities = Capabilities::NONE
    .with(Capability::Inspect)
    .with(Capability::CancelQueued)
    .with(Capability::UniqueKeys)
    .with(Capability::Priorities)
    .with(Capability::StoredResults)
    .with(Capability::Backlog)
    .with(Capability::WorkerReports)
    .with(Capability::RetentionByAge);

#[async_trait]
impl Broker for SqliteBroker {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn job_limits(&self) -> JobLimits {
        self.shared.opts.limits
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, BrokerError> {
        check_new_jobs(&jobs, CAPABILITIES, &self.shared.opts.limits)?;
        self.call(|r| Cmd::Enqueue(jobs, r)).await
    }

    async fn fetch(&self, req: FetchRequest) -> Result<Vec<Delivery>, BrokerError> {
        // The writer parks the request until jobs are runnable or the wait runs out.
        let deadline = std::time::Instant::now() + req.wait;
        self.call(|reply| {
            Cmd::Fetch(Fetch {
                queues: req.queues,
                max: req.max,
                lease: req.lease,
                deadline,
                reply,
            })
        })
        .await
    }

    async fn settle(
        &self,
        settlements: Vec<(Lease, Settlement)>,
    ) -> Result<Vec<SettleOutcome>, BrokerError> {
        self.call(|r| Cmd::Settle(settlements, r)).await
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        let leases = leases.to_vec();
        self.call(|r| Cmd::Heartbeat(leases, extend, r)).await
    }

    async fn report(&self, status: WorkerStatus) -> Result<(), BrokerError> {
        self.call(|r| Cmd::Report(status, r)).await
    }

    async fn retire(&self, worker: &str) -> Result<(), BrokerError> {
        let worker = worker.to_owned();
        self.call(|r| Cmd::Retire(worker, r)).await
    }

    async fn backlog(&self, queues: &[String]) -> Result<Vec<u64>, BrokerError> {
        let queues = queues.to_vec();
        self.call(|r| Cmd::Backlog(queues, r)).await
    }

    fn inspect(&self) -> Option<&dyn Inspect> {
        Some(self)
    }
}
