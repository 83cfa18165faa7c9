//! [`Batcher`]: group commit for workflow stores. Members finishing at once each need a small
//! transaction, and on every store the commit (an fsync, a row lock held across a round trip)
//! costs more than the work. A batcher owns one connection on a thread of its own and runs
//! whatever calls have queued meanwhile in one transaction. A call that may fail for its own
//! reasons (a duplicate id) runs in a savepoint and rolls back alone; any other failure is the
//! database's, and fails the whole batch (PostgreSQL would have aborted the transaction
//! anyway), so no call is ever told it committed when it did not. Written here, once, for the
//! SQLite and PostgreSQL stores.

use std::sync::mpsc;

use weir_core::BrokerError;

/// A transaction-control statement failed (the database's own words).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BatchError(String);

impl BatchError {
    /// An error with the database's message.
    pub fn new(message: impl std::fmt::Display) -> Self {
        BatchError(message.to_string())
    }
}

/// A connection a [`Batcher`] drives.
pub trait BatchConn: Send + 'static {
    /// Runs one transaction-control statement (`BEGIN`, `SAVEPOINT …`, `COMMIT`, …).
    fn control(&mut self, sql: &str) -> Result<(), BatchError>;
    /// Called before each batch: reconnects a connection that was lost. By default, nothing.
    fn ensure(&mut self) -> Result<(), BatchError> {
        Ok(())
    }
}

/// One queued call, and whether it runs in a savepoint of its own. It runs inside the batch's
/// transaction (or learns why there is none), says whether it succeeded, and hands back what
/// to reply once the commit's outcome is known.
type Call<C> = (bool, Run<C>);
type Run<C> = Box<dyn FnOnce(Result<&mut C, &BatchError>) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(Option<&BatchError>) + Send>;

/// A handle to a batching thread. Cheap to clone; the thread ends when the last handle is
/// dropped, after answering what was queued.
pub struct Batcher<C> {
    calls: mpsc::Sender<Call<C>>,
}

impl<C> Clone for Batcher<C> {
    fn clone(&self) -> Self {
        Batcher {
            calls: self.calls.clone(),
        }
    }
}

impl<C: BatchConn> Batcher<C> {
    /// Starts the thread `name`, owning `conn`. Each batch starts with `begin` (e.g. `BEGIN
    /// IMMEDIATE` on SQLite) and holds at most `max` calls.
    pub fn start(
        name: &str,
        conn: C,
        begin: &'static str,
        max: usize,
    ) -> Result<Self, BrokerError> {
        let (calls, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || serve(conn, rx, begin, max.max(1)))
            .map_err(|e| BrokerError::Other(format!("cannot start the {name} thread: {e}")))?;
        Ok(Batcher { calls })
    }

    /// Runs `f` in the next batch's transaction and returns its result once that transaction
    /// has committed. An error from `f` rolls the whole batch back (every call in it fails):
    /// for calls that fail only when the database does.
    ///
    /// Cancel safety: dropping the future does not undo the call: it still runs and commits.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut C) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        self.queue(false, f).await
    }

    /// As [`call`](Self::call), in a savepoint of its own: an error from `f` undoes only what
    /// `f` did, and the rest of the batch commits. Two more statements per call.
    ///
    /// Cancel safety: as [`call`](Self::call).
    pub async fn call_isolated<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut C) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        self.queue(true, f).await
    }

    async fn queue<T: Send + 'static>(
        &self,
        isolated: bool,
        f: impl FnOnce(&mut C) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let run: Run<C> = Box::new(move |conn| {
            let out = match conn {
                Ok(c) => f(c),
                Err(e) => Err(BrokerError::Unavailable(e.to_string())),
            };
            let ok = out.is_ok();
            let reply: Reply = Box::new(move |commit_error| {
                let _ = reply.send(match (commit_error, out) {
                    (Some(e), Ok(_)) => Err(BrokerError::Unavailable(e.to_string())),
                    (_, out) => out,
                });
            });
            (ok, reply)
        });
        self.calls
            .send((isolated, run))
            .map_err(|_| BrokerError::Closed)?;
        answer
            .await
            .map_err(|_| BrokerError::Other("the store thread stopped".into()))?
    }
}

fn serve<C: BatchConn>(mut conn: C, rx: mpsc::Receiver<Call<C>>, begin: &str, max: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(max - 1));
        let mut replies = Vec::with_capacity(batch.len());
        if let Err(e) = conn.ensure().and_then(|_| conn.control(begin)) {
            for (_, call) in batch {
                replies.push(call(Err(&e)).1);
            }
            replies.into_iter().for_each(|r| r(None));
            continue;
        }
        // Set when the batch cannot commit: a plain call failed, or a savepoint broke.
        let mut failed: Option<BatchError> = None;
        for (isolated, call) in batch {
            if let Some(e) = &failed {
                replies.push(call(Err(e)).1);
                continue;
            }
            if isolated {
                if let Err(e) = conn.control("SAVEPOINT weir_call") {
                    replies.push(call(Err(&e)).1);
                    failed = Some(e);
                    continue;
                }
            }
            let (ok, reply) = call(Ok(&mut conn));
            replies.push(reply);
            let closed = match (isolated, ok) {
                (false, true) => Ok(()),
                (false, false) => Err(BatchError::new(
                    "another call in the same transaction failed",
                )),
                (true, true) => conn.control("RELEASE SAVEPOINT weir_call"),
                (true, false) => conn
                    .control("ROLLBACK TO SAVEPOINT weir_call")
                    .and_then(|_| conn.control("RELEASE SAVEPOINT weir_call")),
            };
            if let Err(e) = closed {
                failed = Some(e);
            }
        }
        let committed = match failed {
            Some(e) => Err(e),
            None => conn.control("COMMIT"),
        };
        if committed.is_err() {
            let _ = conn.control("ROLLBACK");
        }
        let err = committed.as_ref().err();
        replies.into_iter().for_each(|r| r(err));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the statements it is given; fails `COMMIT` when told to.
    struct Log(Arc<Mutex<Vec<String>>>, bool);

    impl BatchConn for Log {
        fn control(&mut self, sql: &str) -> Result<(), BatchError> {
            self.0.lock().unwrap().push(sql.to_owned());
            if sql == "COMMIT" && self.1 {
                return Err(BatchError::new("disk full"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_isolated_call_rolls_back_alone_and_a_failed_commit_fails_all() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let b = Batcher::start("test-batch", Log(log.clone(), false), "BEGIN", 8).unwrap();
        assert_eq!(b.call(|_| Ok(1)).await.unwrap(), 1);
        let e = b
            .call_isolated(|_| Err::<(), _>(BrokerError::Invalid("no".into())))
            .await
            .unwrap_err();
        assert!(matches!(e, BrokerError::Invalid(_)));
        let seen = log.lock().unwrap().clone();
        assert!(
            seen.contains(&"ROLLBACK TO SAVEPOINT weir_call".to_owned()),
            "{seen:?}"
        );
        assert_eq!(seen.iter().filter(|s| *s == "COMMIT").count(), 2);

        let b = Batcher::start("test-batch", Log(Arc::default(), true), "BEGIN", 8).unwrap();
        let e = b.call(|_| Ok(1)).await.unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
    }

    /// A plain call that fails takes its whole batch down: the call before it in the same
    /// transaction is told it did not commit, and the batch is rolled back.
    #[tokio::test]
    async fn a_failing_plain_call_rolls_the_batch_back() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let b = Batcher::start("test-batch", Log(log.clone(), false), "BEGIN", 8).unwrap();
        // Hold the thread in a first batch until both calls below are queued, so they share
        // the second.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (running, is_running) = tokio::sync::oneshot::channel::<()>();
        let blocker = tokio::spawn({
            let b = b.clone();
            async move {
                b.call(move |_| {
                    let _ = running.send(());
                    wait.recv().unwrap();
                    Ok(())
                })
                .await
            }
        });
        is_running.await.unwrap();
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.call(|_| Ok(1)).await }
        });
        let second = tokio::spawn({
            let b = b.clone();
            async move {
                b.call(|_| Err::<(), _>(BrokerError::Other("disk".into())))
                    .await
            }
        });
        // On this single-threaded runtime, yielding lets both tasks run up to their send.
        tokio::task::yield_now().await;
        go.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        let e = first.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("another call"), "{e}");
        assert!(second.await.unwrap().is_err());
        let seen = log.lock().unwrap().clone();
        assert_eq!(
            seen.last().map(String::as_str),
            Some("ROLLBACK"),
            "{seen:?}"
        );
        assert!(
            !seen.contains(&"SAVEPOINT weir_call".to_owned()),
            "plain calls need none"
        );
    }
}
