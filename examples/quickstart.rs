//! The library in one page: a typed task, a durable enqueue, a worker that runs it.
//!
//! Run with `cargo run --example quickstart`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir::{Client, Inspect, JobState, NewJob, Registry, Task, TaskContext, TaskError, Worker};

/// A task: its fields are the payload.
#[derive(Serialize, Deserialize)]
struct Thumbnail {
    url: String,
    width: u32,
}

impl Task for Thumbnail {
    const KIND: &'static str = "thumbnail";
    type Output = String;

    async fn run(self, cx: TaskContext) -> Result<String, TaskError> {
        if self.width == 0 {
            // Bad input will never get better: fail for good.
            return Err(TaskError::permanent("width must be positive"));
        }
        if cx.attempt() == 1 && self.url.contains("flaky") {
            // Transient trouble: retried with backoff.
            return Err(TaskError::retryable("upstream timed out"));
        }
        Ok(format!("{}@{}w", self.url, self.width))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = weir::open_broker(&format!(
        "sqlite:{}",
        dir.path().join("quickstart.db").display()
    ))?;
    let client = Client::new(broker.clone());

    let ok = client
        .enqueue(&Thumbnail {
            url: "https://example.com/a.png".into(),
            width: 64,
        })
        .await?;
    let flaky = client
        .enqueue(&Thumbnail {
            url: "https://flaky.example.com/b.png".into(),
            width: 64,
        })
        .await?;
    let bad = client
        .enqueue(&Thumbnail {
            url: "https://example.com/c.png".into(),
            width: 0,
        })
        .await?;
    // Raw jobs too: a delayed one, deduplicated by a unique key.
    let job = NewJob::for_task(&Thumbnail {
        url: "https://example.com/d.png".into(),
        width: 32,
    })?
    .delay(Duration::from_millis(200))
    .unique("thumb:d");
    client.enqueue_job(job).await?;

    let mut registry = Registry::new();
    registry
        .register::<Thumbnail>()
        .backoff(weir::Backoff::new(
            Duration::from_millis(50),
            2.0,
            Duration::from_secs(1),
        )?)
        .timeout(Duration::from_secs(10));
    let worker = Worker::builder(broker.clone(), registry)
        .queue("default", 4)
        .build()?;
    let inspect = broker.clone();
    let report = worker
        .run(async move {
            // Stop once the three jobs we watch are finished.
            let i = inspect.inspect().expect("the embedded broker can inspect");
            loop {
                let mut finished = 0;
                for id in [ok.id, flaky.id, bad.id] {
                    if i.get(id)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|j| j.state.is_finished())
                    {
                        finished += 1;
                    }
                }
                if finished == 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    println!("{report:?}");
    let i: &dyn Inspect = broker.inspect().expect("inspect");
    for id in [ok.id, flaky.id, bad.id] {
        let j = i.get(id).await?.expect("stored");
        let result = j.result.as_deref().map(String::from_utf8_lossy);
        println!(
            "{id}: {} after {} attempt(s) {result:?} {:?}",
            j.state, j.attempt, j.last_error
        );
    }
    assert_eq!(
        i.get(bad.id).await?.map(|j| j.state),
        Some(JobState::Failed)
    );
    Ok(())
}
