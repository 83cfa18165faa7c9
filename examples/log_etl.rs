//! A log ETL under overload: lines are parsed, enriched by a slow lookup, and written in
//! batches. The lookup has a deadline; lines that miss it are shed to a side output (kept for
//! a later replay) instead of backing up the whole pipeline, and the counters say how many.
//!
//! `cargo run --example log_etl`

use std::time::Duration;

use weir::flow::{Flow, Shed, StageOptions};

#[derive(Clone, Debug)]
struct Line {
    n: u32,
    text: String,
}

#[derive(Debug)]
struct Event {
    n: u32,
    level: String,
    region: &'static str,
}

fn parse(line: Line) -> Option<Line> {
    // Drop lines that are not `LEVEL message`.
    line.text.contains(' ').then_some(line)
}

/// A lookup service that is sometimes slow (every seventh call takes 200 ms).
async fn enrich(line: Line) -> Event {
    let slow = line.n.is_multiple_of(7);
    tokio::time::sleep(Duration::from_millis(if slow { 200 } else { 2 })).await;
    let level = line.text.split(' ').next().unwrap_or("").to_owned();
    Event {
        n: line.n,
        level,
        region: if line.n.is_multiple_of(2) { "eu" } else { "us" },
    }
}

#[tokio::main]
async fn main() {
    let lines: Vec<Line> = (0..500)
        .map(|n| Line {
            n,
            text: if n % 50 == 49 {
                "garbage".to_owned()
            } else {
                format!(
                    "{} request {n} served",
                    ["INFO", "WARN", "ERROR"][n as usize % 3]
                )
            },
        })
        .collect();
    let (replay_tx, mut replay_rx) = tokio::sync::mpsc::channel(1000);
    let flow = Flow::source(lines)
        .filter_map(
            "parse",
            StageOptions::default().concurrency(2),
            |l| async move { parse(l) },
        )
        .map(
            "enrich",
            StageOptions::default()
                .concurrency(16)
                .ordered(false)
                .timeout(Duration::from_millis(50))
                .shed(Shed::Divert(replay_tx)),
            enrich,
        )
        .batch("write", 100, Duration::from_millis(100));
    let stats = flow.stats();
    let mut written = 0;
    let mut errors = 0;
    flow.for_each(|batch: Vec<Event>| {
        written += batch.len();
        errors += batch.iter().filter(|e| e.level == "ERROR").count();
        if let Some(first) = batch.first() {
            println!(
                "wrote a batch of {} (first: line {} from {})",
                batch.len(),
                first.n,
                first.region
            );
        }
    })
    .await;
    let mut replay = 0;
    while replay_rx.try_recv().is_ok() {
        replay += 1;
    }
    println!("written {written} events ({errors} errors); {replay} lines shed to the replay queue");
    for s in stats.stages() {
        println!(
            "  {:<8} taken {:>4}  emitted {:>4}  shed {:>3}  peak queued {:>3}/{}",
            s.name, s.taken, s.emitted, s.shed, s.peak_queued, s.capacity
        );
    }
    let enrich = stats
        .stages()
        .into_iter()
        .find(|s| s.name == "enrich")
        .unwrap();
    assert_eq!(
        enrich.shed as usize, replay,
        "every shed line went to the replay queue"
    );
    assert_eq!(
        written + replay + 10,
        500,
        "each line is written, shed or unparseable"
    );
}
