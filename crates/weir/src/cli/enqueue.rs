use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use serde::Deserialize;
use weir::NewJob;

use super::{parse_duration, Args};

#[derive(ClapArgs, Debug)]
pub(crate) struct EnqueueArgs {
    /// The task kind (e.g. noop, sleep, fail, shell, http). Not with --batch.
    #[arg(required_unless_present = "batch", conflicts_with = "batch")]
    kind: Option<String>,
    /// The payload, as JSON.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// The queue.
    #[arg(long, default_value = weir::DEFAULT_QUEUE)]
    queue: String,
    /// Run no sooner than this from now (e.g. 10s, 5m).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// While a job with this key is unfinished, return its id instead of adding another.
    #[arg(long)]
    unique: Option<String>,
    /// How many times the job may run.
    #[arg(long, default_value_t = weir::DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Time budget of one attempt (a timeout is retried).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Enqueue from a JSON-lines file (`-` for stdin), one object per line:
    /// {"kind":..,"payload":..,"queue":..,"delay":..,"priority":..,"unique":..,"max_attempts":..}
    #[arg(long)]
    batch: Option<PathBuf>,
}

/// One line of a batch file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    kind: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    delay: Option<DelaySpec>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    unique: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout: Option<DelaySpec>,
}

/// `"10s"` or a number of milliseconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum DelaySpec {
    Millis(u64),
    Text(String),
}

impl DelaySpec {
    fn get(&self) -> Result<Duration, String> {
        match self {
            DelaySpec::Millis(ms) => Ok(Duration::from_millis(*ms)),
            DelaySpec::Text(s) => parse_duration(s),
        }
    }
}

fn job_from_line(l: Line) -> Result<NewJob, String> {
    if l.kind.trim().is_empty() {
        return Err("`kind` must not be empty".into());
    }
    let payload = serde_json::to_vec(&l.payload.unwrap_or_else(|| serde_json::json!({})))
        .map_err(|e| e.to_string())?;
    let mut j = NewJob::new(l.kind, payload);
    if let Some(q) = l.queue {
        if q.is_empty() {
            return Err("`queue` must not be empty".into());
        }
        j = j.queue(q);
    }
    if let Some(d) = l.delay {
        j = j.delay(d.get().map_err(|e| format!("`delay`: {e}"))?);
    }
    if let Some(t) = l.timeout {
        j = j.timeout(t.get().map_err(|e| format!("`timeout`: {e}"))?);
    }
    if let Some(p) = l.priority {
        j = j.priority(p);
    }
    if let Some(u) = l.unique {
        j = j.unique(u);
    }
    if let Some(m) = l.max_attempts {
        if m == 0 {
            return Err("`max_attempts` must be at least 1".into());
        }
        j = j.max_attempts(m);
    }
    Ok(j)
}

/// Reads every line first, so a bad line enqueues nothing and names itself.
fn read_batch(path: &PathBuf) -> anyhow::Result<Vec<NewJob>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ))
    };
    let name = if path.as_os_str() == "-" {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    };
    let mut jobs = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{name}:{}: {e}", i + 1))?;
        jobs.push(job_from_line(parsed).map_err(|e| anyhow::anyhow!("{name}:{}: {e}", i + 1))?);
    }
    Ok(jobs)
}

pub(crate) async fn run(args: &Args, a: &EnqueueArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &a.batch {
        let jobs = read_batch(path)?;
        let broker = args.open()?;
        let total = jobs.len();
        let mut dup = 0;
        let mut it = jobs.into_iter().peekable();
        while it.peek().is_some() {
            let chunk: Vec<NewJob> = it.by_ref().take(1000).collect();
            let out = broker.enqueue_many(chunk).await?;
            dup += out.iter().filter(|e| e.duplicate).count();
        }
        println!(
            "enqueued {} jobs ({dup} duplicates of unfinished unique keys)",
            total - dup
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(kind) = &a.kind else {
        bail!("a KIND or --batch is required")
    };
    let payload: serde_json::Value = serde_json::from_str(&a.payload)
        .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))?;
    let mut job = NewJob::new(kind.as_str(), serde_json::to_vec(&payload)?)
        .queue(a.queue.as_str())
        .priority(a.priority)
        .max_attempts(a.max_attempts);
    if let Some(d) = a.delay {
        job = job.delay(d);
    }
    if let Some(t) = a.timeout {
        job = job.timeout(t);
    }
    if let Some(u) = &a.unique {
        job = job.unique(u.as_str());
    }
    let broker = args.open()?;
    let out = broker.enqueue(job).await?;
    if out.duplicate {
        eprintln!("unique key already held by unfinished job {}", out.id);
    }
    println!("{}", out.id);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NewJob, String> {
        let l: Line = serde_json::from_str(s).map_err(|e| e.to_string())?;
        job_from_line(l)
    }

    #[test]
    fn batch_lines() {
        let j = parse(r#"{"kind":"sleep","payload":{"ms":5},"queue":"q","delay":"2s","priority":3,"unique":"u","max_attempts":2}"#).unwrap();
        assert_eq!(
            (j.kind.as_str(), j.queue.as_str(), j.priority),
            ("sleep", "q", 3)
        );
        assert_eq!(j.delay, Some(Duration::from_secs(2)));
        assert_eq!(j.payload, br#"{"ms":5}"#);
        assert_eq!(
            parse(r#"{"kind":"noop","delay":250}"#).unwrap().delay,
            Some(Duration::from_millis(250))
        );
        assert!(parse(r#"{"kind":"noop","dely":"2s"}"#)
            .unwrap_err()
            .contains("unknown field `dely`"));
        assert!(parse(r#"{"kind":"noop","delay":"soon"}"#)
            .unwrap_err()
            .contains("`delay`"));
        assert!(parse(r#"{"kind":""}"#).unwrap_err().contains("`kind`"));
        assert!(parse(r#"{"kind":"x","max_attempts":0}"#)
            .unwrap_err()
            .contains("max_attempts"));
    }
}
