//! The `/api/v1` handlers: jobs, queues, workers, workflows. Each answers in the words of the
//! CLI command that does the same (`weir enqueue`, `status`, `list`, `inspect`, `retry`,
//! `cancel`, `workflow submit`), with the same validation.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use weir_core::{Capability, JobId, JobState, ListFilter, NewJob};
use weir_workflow::{WorkflowId, WorkflowSpec};

use super::{ApiError, ApiState};

type Answer = Result<Json<Value>, ApiError>;

/// The most jobs one list returns.
const MAX_LIST: usize = 1_000;

/// The most jobs one enqueue request carries (send more in several).
const MAX_ENQUEUE: usize = 10_000;

/// A job to enqueue, as JSON. Only `kind` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobRequest {
    kind: String,
    /// Any JSON value; by default `null`.
    #[serde(default)]
    payload: Value,
    queue: Option<String>,
    /// Run no earlier than this long from now: `"10s"`, `"1h 30m"`.
    delay: Option<String>,
    max_attempts: Option<u32>,
    /// Per-attempt timeout: `"30s"`.
    timeout: Option<String>,
    unique_key: Option<String>,
    priority: Option<i32>,
    trace_id: Option<String>,
}

fn duration(field: &str, s: &str) -> Result<Duration, ApiError> {
    let d = humantime::parse_duration(s).map_err(|e| {
        ApiError::bad_request(format!(
            "`{field}`: `{s}` is not a duration ({e}); e.g. 10s, 250ms, 1h"
        ))
    })?;
    if d > weir_core::MAX_DURATION {
        return Err(ApiError::bad_request(format!(
            "`{field}`: `{s}` is longer than 100 years"
        )));
    }
    Ok(d)
}

impl JobRequest {
    fn into_new_job(self, index: usize) -> Result<NewJob, ApiError> {
        let at = |e: ApiError| ApiError::bad_request(format!("job {index}: {}", e.message));
        let payload = serde_json::to_vec(&self.payload)
            .map_err(|e| at(ApiError::bad_request(e.to_string())))?;
        let mut job = NewJob::new(self.kind, payload);
        if let Some(q) = self.queue {
            job = job.queue(q);
        }
        if let Some(d) = self.delay {
            job = job.delay(duration("delay", &d).map_err(at)?);
        }
        if let Some(n) = self.max_attempts {
            job = job.max_attempts(n);
        }
        if let Some(t) = self.timeout {
            job = job.timeout(duration("timeout", &t).map_err(at)?);
        }
        if let Some(k) = self.unique_key {
            job = job.unique(k);
        }
        if let Some(p) = self.priority {
            job = job.priority(p);
        }
        if let Some(t) = self.trace_id {
            job = job.trace_id(t);
        }
        Ok(job)
    }
}

/// A JSON body, or what is wrong with it: 413 too large, 415 not JSON, else 400 (axum's 422
/// for a well-formed body of the wrong shape included: one status for a bad request).
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| {
        let status = match e.status() {
            s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.body_text())
    })
}

fn job_id(p: Result<Path<String>, PathRejection>) -> Result<JobId, ApiError> {
    let Path(s) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    s.parse()
        .map_err(|e| ApiError::bad_request(format!("`{s}` is not a job id: {e}")))
}

fn inspect(st: &ApiState) -> Result<&dyn weir_core::Inspect, ApiError> {
    st.broker
        .inspect()
        .filter(|_| st.broker.capabilities().has(Capability::Inspect))
        .ok_or_else(|| {
            ApiError::not_implemented(
                "this broker cannot find jobs by id (RabbitMQ keeps no finished jobs and cannot \
                 look a queued one up); see /api/v1/queues for its depths",
            )
        })
}

/// `POST /api/v1/jobs`: one job (an object) or many (an array), all or nothing.
pub(crate) async fn enqueue(
    State(st): State<Arc<ApiState>>,
    b: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let v = body(b)?;
    let many = v.is_array();
    if v.as_array().is_some_and(|a| a.len() > MAX_ENQUEUE) {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ENQUEUE} jobs per request; send the rest in another"
        )));
    }
    let reqs: Vec<JobRequest> = match v {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value(item)
                    .map_err(|e| ApiError::bad_request(format!("job {i}: {e}")))
            })
            .collect::<Result<_, _>>()?,
        other => vec![serde_json::from_value(other)
            .map_err(|e| ApiError::bad_request(format!("job 0: {e}")))?],
    };
    if reqs.is_empty() {
        return Err(ApiError::bad_request("no jobs: the array is empty"));
    }
    let jobs = reqs
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.into_new_job(i))
        .collect::<Result<Vec<_>, _>>()?;
    let done = st.broker.enqueue_many(jobs).await?;
    let out: Vec<Value> = done
        .iter()
        .map(|e| json!({ "id": e.id, "duplicate": e.duplicate }))
        .collect();
    let body = if many {
        json!({ "jobs": out })
    } else {
        out.into_iter().next().unwrap_or(Value::Null)
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /api/v1/jobs/{id}`.
pub(crate) async fn get_job(
    State(st): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let id = job_id(id)?;
    match inspect(&st)?.get(id).await? {
        Some(job) => Ok(Json(json!(job))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}"))),
    }
}

/// The conditions of a search, as query parameters or a bulk action's `filter`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterQuery {
    state: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    /// Created at or after (ms since the epoch).
    since: Option<i64>,
    /// Created before (ms since the epoch).
    until: Option<i64>,
    /// Text in the payload or the last error.
    text: Option<String>,
}

impl FilterQuery {
    fn filter(self, limit: usize) -> Result<ListFilter, ApiError> {
        let state = match self.state.as_deref() {
            None => None,
            Some(s) => Some(
                s.parse::<JobState>()
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
        };
        if self.text.as_deref() == Some("") {
            return Err(ApiError::bad_request("`text` is empty"));
        }
        Ok(ListFilter {
            queue: self.queue,
            state,
            kind: self.kind,
            since: self.since.map(weir_core::Timestamp),
            until: self.until.map(weir_core::Timestamp),
            text: self.text,
            limit,
        })
    }
}

/// The query of `GET /api/v1/jobs`: [`FilterQuery`]'s fields, written out (serde's
/// `flatten` would read `since` and `until` from a query string as text and refuse them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    text: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn limit_of(limit: Option<usize>, max: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!(
            "`limit` must be from 1 to {max}, got {limit}"
        )));
    }
    Ok(limit)
}

/// `GET /api/v1/jobs?state=&queue=&kind=&since=&until=&text=&limit=&cursor=`: one page,
/// newest first, at most 1,000, and the cursor of the next (`next`; `null` at the end). A
/// page may be short, even empty, before the end: the embedded broker looks at a bounded
/// number of rows per call.
pub(crate) async fn list(
    State(st): State<Arc<ApiState>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = FilterQuery {
        state: q.state,
        queue: q.queue,
        kind: q.kind,
        since: q.since,
        until: q.until,
        text: q.text,
    }
    .filter(limit_of(q.limit, MAX_LIST)?)?;
    let page = inspect(&st)?.search(filter, q.cursor.as_deref()).await?;
    let mut out = json!(page);
    if let Some(jobs) = out["jobs"].as_array_mut() {
        for (v, job) in jobs.iter_mut().zip(&page.jobs) {
            elide_large(v, "payload", job.payload.len());
            elide_large(v, "result", job.result.as_ref().map_or(0, Vec::len));
        }
    }
    Ok(Json(out))
}

/// The largest payload or result a list page carries; a larger one is left out of the page
/// (`GET /api/v1/jobs/{id}` has it), so a page of 1,000 jobs stays under about 64 MiB.
const LIST_VALUE_MAX: usize = 64 << 10;

/// Replaces `field` of a listed job by `null` when its value is over [`LIST_VALUE_MAX`]
/// bytes, saying so in `{field}_elided` with its size.
fn elide_large(job: &mut Value, field: &str, bytes: usize) {
    if bytes > LIST_VALUE_MAX {
        job[field] = Value::Null;
        job[format!("{field}_elided")] = json!({ "bytes": bytes });
    }
}

/// The body of `POST /api/v1/jobs/bulk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkRequest {
    /// `retry`, `cancel` or `delete`.
    action: String,
    /// Which jobs; every job matching it, not only one page.
    #[serde(default)]
    filter: FilterQuery,
    /// The most jobs acted on in this call (default 10,000, at most 100,000); `next` says
    /// where to go on.
    max: Option<usize>,
    cursor: Option<String>,
}

/// How many per-job actions are in flight at once (the embedded broker commits them in
/// rounds).
const BULK_CONCURRENCY: usize = 256;

/// `POST /api/v1/jobs/bulk`: retries, cancels or deletes every job matching a filter,
/// through the same per-job operation as one job (so a retry is fenced and a cancelled
/// workflow member fails its workflow). Answers how many matched and were acted on, the
/// first 100 that could not be (e.g. a retry of a job not failed), and `next` if it stopped at
/// `max`.
pub(crate) async fn bulk(
    State(st): State<Arc<ApiState>>,
    b: Result<Json<BulkRequest>, JsonRejection>,
) -> Answer {
    let req = body(b)?;
    let action = match req.action.as_str() {
        a @ ("retry" | "cancel" | "delete") => a,
        other => {
            return Err(ApiError::bad_request(format!(
                "`action` `{other}` is not one of retry, cancel, delete"
            )))
        }
    };
    if action == "cancel" && !st.broker.capabilities().has(Capability::CancelQueued) {
        return Err(ApiError::not_implemented(
            "this broker cannot cancel a queued job",
        ));
    }
    let max = match req.max {
        None => 10_000,
        Some(n) if (1..=100_000).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "`max` must be from 1 to 100000, got {n}"
            )))
        }
    };
    let i = inspect(&st)?;
    let filter = req.filter.filter(MAX_LIST)?;
    // Stops in time to answer inside the request timeout, with `next` to go on from.
    let budget = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let (mut matched, mut done) = (0usize, 0usize);
    let mut refused: Vec<Value> = Vec::new();
    let mut cursor = req.cursor;
    loop {
        let page = i
            .search(
                ListFilter {
                    limit: MAX_LIST.min(max - matched),
                    ..filter.clone()
                },
                cursor.as_deref(),
            )
            .await?;
        matched += page.jobs.len();
        for chunk in page.jobs.chunks(BULK_CONCURRENCY) {
            let results = futures::future::join_all(chunk.iter().map(|j| {
                let st = st.clone();
                async move {
                    let r = match action {
                        "retry" => i.retry(j.id).await.map_err(|e| e.to_string()),
                        "cancel" => {
                            cancel_one(st, j.id, "cancelled by an operator (HTTP API, bulk)")
                                .await
                                .map_err(|e| e.message)
                        }
                        _ => i.delete(j.id).await.map_err(|e| e.to_string()),
                    };
                    r.map(|_| ()).map_err(|e| (j.id, e))
                }
            }))
            .await;
            for r in results {
                match r {
                    Ok(()) => done += 1,
                    Err((id, e)) if refused.len() < 100 => {
                        refused.push(json!({ "id": id, "error": e }))
                    }
                    Err(_) => {}
                }
            }
        }
        if page.next.is_some() && page.next == cursor {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the broker's search did not move on from its cursor",
            ));
        }
        cursor = page.next;
        if cursor.is_none() || matched >= max || tokio::time::Instant::now() > budget {
            break;
        }
    }
    Ok(Json(json!({
        "action": action,
        "matched": matched,
        "done": done,
        "refused": refused,
        "next": cursor,
    })))
}

/// `DELETE /api/v1/jobs/{id}`: a finished job (409 for one still pending or running).
pub(crate) async fn delete(
    State(st): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let id = job_id(id)?;
    Ok(Json(json!(inspect(&st)?.delete(id).await?)))
}

/// `POST /api/v1/jobs/{id}/retry`.
pub(crate) async fn retry(
    State(st): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let id = job_id(id)?;
    Ok(Json(json!(inspect(&st)?.retry(id).await?)))
}

/// `POST /api/v1/jobs/{id}/cancel`. A workflow member cancelled this way fails its workflow,
/// as `weir cancel` does.
pub(crate) async fn cancel(
    State(st): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let id = job_id(id)?;
    if !st.broker.capabilities().has(Capability::CancelQueued) {
        return Err(ApiError::not_implemented(
            "this broker cannot cancel a queued job (RabbitMQ cannot take one message out of a queue)",
        ));
    }
    let job = cancel_one(st, id, "cancelled by an operator (HTTP API)").await?;
    Ok(Json(json!(job)))
}

/// Cancels one job and, for a workflow member, tells its workflow (else it would wait for
/// the member for ever), as `weir cancel` does. A member is refused without a workflow
/// store to tell; a member already cancelled is told again (a retry after a failure to tell
/// it). Runs in a task of its own, so a request that times out or loses its client never
/// leaves a member cancelled and its workflow untold.
async fn cancel_one(
    st: Arc<ApiState>,
    id: JobId,
    reason: &'static str,
) -> Result<weir_core::Job, ApiError> {
    tokio::spawn(async move {
        let i = inspect(&st)?;
        let before = i
            .get(id)
            .await?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")))?;
        if before.member.is_some() && st.workflows.is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "this job is a workflow member, and no workflow store is configured to tell its \
                 workflow (give --store, WEIR_STORE or `store` in weir.toml)",
            ));
        }
        let job = match i.cancel(id).await {
            Ok(j) => j,
            Err(weir_core::BrokerError::WrongState {
                state: JobState::Cancelled,
                ..
            }) if before.member.is_some() => before,
            Err(e) => return Err(e.into()),
        };
        if let (Some(member), Some(wf)) = (job.member, &st.workflows) {
            wf.member_ended(member, reason).await?;
        }
        Ok(job)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

fn workflows(st: &ApiState) -> Result<&weir_workflow::Workflows, ApiError> {
    st.workflows.as_ref().ok_or_else(|| {
        ApiError::not_implemented(
            "no workflow state store is configured (give --store, WEIR_STORE or `store` in weir.toml)",
        )
    })
}

/// `POST /api/v1/workflows`: a workflow spec, as `weir workflow submit` takes.
pub(crate) async fn submit_workflow(
    State(st): State<Arc<ApiState>>,
    b: Result<Json<WorkflowSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec = body(b)?;
    let id = workflows(&st)?.submit(&spec).await.map_err(|e| match e {
        weir_workflow::SubmitError::Invalid(e) => ApiError::bad_request(e.to_string()),
        weir_workflow::SubmitError::Broker(e) => e.into(),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))))
}

/// `GET /api/v1/workflows/{id}`: progress, members and result.
pub(crate) async fn get_workflow(
    State(st): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let wf = workflows(&st)?;
    let Path(s) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id: WorkflowId = s
        .parse()
        .map_err(|e| ApiError::bad_request(format!("`{s}` is not a workflow id: {e}")))?;
    let Some(status) = wf.status(id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no workflow {id}"),
        ));
    };
    let members = wf.members(id).await?;
    let result = weir_workflow::workflow_result(&status, &members);
    Ok(Json(
        json!({ "workflow": status, "members": members, "result": result }),
    ))
}
