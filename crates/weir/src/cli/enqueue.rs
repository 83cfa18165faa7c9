use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use serde::Deserialize;
use weir::{JobLimits, NewJob};

use super::{parse_duration, parse_positive_duration, Args};

#[derive(ClapArgs, Debug)]
pub(crate) struct EnqueueArgs {
    /// The task kind: a built-in one (noop, echo, sleep, fail, shell, http) or your own.
    /// Not with --batch.
    #[arg(required_unless_present = "batch", conflicts_with = "batch")]
    kind: Option<String>,
    /// The payload, as JSON.
    #[arg(long, default_value = "{}", value_parser = parse_payload)]
    payload: serde_json::Value,
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
    #[arg(long, value_parser = parse_positive_duration)]
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
    weir::builtins::check_payload(&l.kind, &payload)?;
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

/// Where a batch comes from: a file, read twice (once to check every line, so a bad line
/// enqueues nothing; once to enqueue). Stdin is first copied to a temporary file, so it
/// gets the same promise in bounded memory.
struct BatchSource {
    path: PathBuf,
    name: String,
    /// The copy of stdin, deleted when the batch is done.
    _spool: Option<tempfile::NamedTempFile>,
}

impl BatchSource {
    fn new(path: &Path) -> anyhow::Result<BatchSource> {
        if path.as_os_str() != "-" {
            return Ok(BatchSource {
                path: path.to_owned(),
                name: path.display().to_string(),
                _spool: None,
            });
        }
        let mut spool = tempfile::NamedTempFile::new().context("spooling stdin")?;
        std::io::copy(&mut std::io::stdin().lock(), spool.as_file_mut())
            .context("reading stdin")?;
        Ok(BatchSource {
            path: spool.path().to_owned(),
            name: "stdin".to_owned(),
            _spool: Some(spool),
        })
    }

    fn open(&self) -> anyhow::Result<Box<dyn BufRead>> {
        Ok(Box::new(std::io::BufReader::new(
            std::fs::File::open(&self.path)
                .with_context(|| format!("cannot open {}", self.name))?,
        )))
    }

    /// Every job of the source with its line number, one at a time (memory stays bounded
    /// by one line, whatever the file's size).
    fn jobs(
        &self,
        limits: JobLimits,
    ) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(usize, NewJob)>> + '_> {
        let reader = self.open()?;
        Ok(reader.lines().enumerate().filter_map(move |(i, line)| {
            let n = i + 1;
            let line = match line {
                Ok(l) if l.trim().is_empty() => return None,
                Ok(l) => l,
                Err(e) => return Some(Err(anyhow::anyhow!("reading {}: {e}", self.name))),
            };
            Some(
                serde_json::from_str::<Line>(&line)
                    .map_err(|e| e.to_string())
                    .and_then(job_from_line)
                    .and_then(|j| j.validate(&limits).map(|()| j).map_err(|e| e.to_string()))
                    .map(|j| (n, j))
                    .map_err(|e| anyhow::anyhow!("{}:{n}: {e}", self.name)),
            )
        }))
    }
}

/// Enqueues a JSON-lines batch in chunks of 1,000, streaming. Every line is checked first,
/// so a bad line enqueues nothing; if the broker then fails part way, the error says exactly
/// how many jobs went in and from which line to resume, so a rerun does not duplicate.
async fn enqueue_batch(args: &Args, path: &Path) -> anyhow::Result<ExitCode> {
    const CHUNK: usize = 1000;
    let src = BatchSource::new(path)?;
    let broker = args.open()?;
    let limits = broker.job_limits();
    for job in src.jobs(limits)? {
        job?;
    }
    let (mut total, mut dup, mut last_line) = (0usize, 0usize, 0usize);
    let stopped = |done: usize, last: usize, e: anyhow::Error| {
        let resume = if done == 0 {
            "nothing was enqueued".to_owned()
        } else {
            format!(
                "the {done} jobs up to line {last} were enqueued; resume from line {} (e.g. `tail -n +{} {}`)",
                last + 1,
                last + 1,
                src.name
            )
        };
        e.context(resume)
    };
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut queues = BTreeSet::new();
    let mut lines = src.jobs(limits)?.peekable();
    while lines.peek().is_some() {
        let mut chunk_last = last_line;
        for item in lines.by_ref().take(CHUNK) {
            match item {
                Ok((n, job)) => {
                    chunk_last = n;
                    if !queues.contains(&job.queue) {
                        queues.insert(job.queue.clone());
                    }
                    chunk.push(job);
                }
                Err(e) => {
                    // The file changed since it was checked: enqueue what came before the
                    // bad line, then stop there.
                    let k = chunk.len();
                    if k > 0 {
                        broker
                            .enqueue_many(std::mem::take(&mut chunk))
                            .await
                            .map_err(|e| stopped(total, last_line, e.into()))?;
                        total += k;
                        last_line = chunk_last;
                    }
                    return Err(stopped(total, last_line, e));
                }
            }
        }
        let k = chunk.len();
        let out = broker
            .enqueue_many(std::mem::take(&mut chunk))
            .await
            .map_err(|e| stopped(total, last_line, e.into()))?;
        dup += out.iter().filter(|e| e.duplicate).count();
        total += k;
        last_line = chunk_last;
    }
    out!(
        "enqueued {} jobs ({dup} duplicates of unfinished unique keys)",
        total - dup
    );
    warn_unserved(&*broker, queues).await;
    Ok(ExitCode::SUCCESS)
}

/// Warns once per queue that no worker has served lately: the job waits (a typo in a queue
/// name would otherwise go unnoticed). Embedded: no worker report for the queue in the last
/// minute; RabbitMQ: no consumer on it. Silent where the broker cannot tell, or on errors
/// (a warning must not fail an enqueue that succeeded).
async fn warn_unserved(broker: &dyn weir::Broker, queues: BTreeSet<String>) {
    let served: Option<Vec<String>> = if let Some(i) = broker
        .inspect()
        .filter(|_| broker.capabilities().has(weir::Capability::WorkerReports))
    {
        let now = weir::Timestamp::now();
        i.workers().await.ok().map(|ws| {
            ws.into_iter()
                .filter(|w| now.since(w.updated_at) <= Duration::from_secs(60))
                .map(|w| w.queue)
                .collect()
        })
    } else if let Some(stats) = broker.queue_stats() {
        let names: Vec<String> = queues.iter().cloned().collect();
        stats.depths(&names).await.ok().map(|ds| {
            ds.into_iter()
                .filter(|d| d.consumers > 0)
                .map(|d| d.queue)
                .collect()
        })
    } else {
        None
    };
    let Some(served) = served else { return };
    for q in queues.iter().filter(|q| !served.contains(q)) {
        eprintln!(
            "warning: no worker has served queue `{q}` in the last minute: its jobs wait until one does (`weir serve --queues {q}`; is the name right?)"
        );
    }
}

/// `--payload`: any JSON value; a malformed one is a usage error (exit 2).
fn parse_payload(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| {
        // `--payload {"ms":10}` unquoted reaches us as `{ms:10}`: the shell ate the quotes.
        let hint = if !s.contains('"') && s.chars().any(char::is_alphabetic) {
            format!(
                "; the shell passed `{s}`: quotes inside unquoted JSON are removed by the shell, \
                 so put the JSON in single quotes, e.g. --payload '{{\"ms\":10}}'"
            )
        } else {
            String::new()
        };
        format!("not valid JSON: {e}{hint}")
    })
}

pub(crate) async fn run(args: &Args, a: &EnqueueArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &a.batch {
        return enqueue_batch(args, path).await;
    }
    let Some(kind) = &a.kind else {
        bail!("a KIND or --batch is required")
    };
    let payload = serde_json::to_vec(&a.payload)?;
    if let Err(e) = weir::builtins::check_payload(kind, &payload) {
        // A value that can never work: a usage error, like a malformed one.
        eprintln!("error: --payload: {e}");
        return Ok(ExitCode::from(2));
    }
    let mut job = NewJob::new(kind.as_str(), payload)
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
    out!("{}", out.id);
    warn_unserved(&*broker, BTreeSet::from([a.queue.clone()])).await;
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

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        /// Any line, JSON or not, parses to a job or to an error that says why; never a
        /// panic (a batch of a million lines must not die on one).
        #[test]
        fn any_batch_line_parses_or_says_why(line in "\\PC{0,120}") {
            if let Err(e) = parse(&line) {
                proptest::prop_assert!(!e.is_empty());
            }
        }

        /// Lines built from the fields a batch may hold, with values of any type or range.
        #[test]
        fn batch_fields_of_any_value_parse_or_say_why(
            kind in proptest::option::of("[ -~]{0,12}|\\PC{0,4}"),
            delay in proptest::option::of(proptest::prop_oneof![
                (-5i64..i64::MAX).prop_map(|n| n.to_string()),
                "\"[0-9a-z ]{0,12}\"",
                proptest::strategy::Just("1e309".to_owned()),
            ]),
            max_attempts in proptest::option::of(proptest::prop_oneof![
                (-3i64..1i64 << 40).prop_map(|n| n.to_string()),
                proptest::strategy::Just("\"3\"".to_owned()),
            ]),
            priority in proptest::option::of(any_int()),
            queue in proptest::option::of("[a-z.:]{0,8}|amq\\.[a-z]{1,3}|\\PC{0,4}"),
        ) {
            let mut fields = Vec::new();
            if let Some(k) = kind { fields.push(format!("\"kind\":{}", serde_json::to_string(&k).unwrap())); }
            if let Some(d) = delay { fields.push(format!("\"delay\":{d}")); }
            if let Some(m) = max_attempts { fields.push(format!("\"max_attempts\":{m}")); }
            if let Some(p) = priority { fields.push(format!("\"priority\":{p}")); }
            if let Some(q) = queue { fields.push(format!("\"queue\":{}", serde_json::to_string(&q).unwrap())); }
            let line = format!("{{{}}}", fields.join(","));
            // As the batch check does: parse, then the one validation every broker runs.
            let checked = parse(&line)
                .and_then(|j| j.validate(&weir::JobLimits::default()).map_err(|e| e.to_string()));
            if let Err(e) = checked {
                proptest::prop_assert!(!e.is_empty());
            }
        }
    }

    fn any_int() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            proptest::num::i64::ANY.prop_map(|n| n.to_string()),
            proptest::strategy::Just("2.5".to_owned()),
        ]
    }
}
