//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, written out here next to the
//! routes it describes (the routes are few and their bodies are weir's own types, so a
//! generator would add a dependency and macros to every handler for little).

use axum::Json;
use serde_json::{json, Value};

fn error_responses(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        m.insert(
            (*c).to_owned(),
            json!({ "description": "an error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
        );
    }
    Value::Object(m)
}

fn ok(description: &str, schema: Value, errors: &[&str]) -> Value {
    let mut r = error_responses(errors);
    r.as_object_mut().expect("object").insert(
        "200".into(),
        json!({ "description": description, "content": { "application/json": { "schema": schema } } }),
    );
    r
}

fn created(schema: Value, errors: &[&str]) -> Value {
    let mut r = error_responses(errors);
    r.as_object_mut().expect("object").insert(
        "201".into(),
        json!({ "description": "created", "content": { "application/json": { "schema": schema } } }),
    );
    r
}

fn id_param(what: &str) -> Value {
    json!([{ "name": "id", "in": "path", "required": true, "description": what, "schema": { "type": "string", "format": "uuid" } }])
}

/// The document.
pub(crate) fn spec() -> Value {
    let any = json!({});
    let obj = json!({ "type": "object" });
    let read = ["400", "401", "404", "501", "503"];
    let write = [
        "400", "401", "403", "404", "409", "413", "415", "501", "503",
    ];
    json!({
        "openapi": "3.1.0",
        "info": { "title": "weir", "version": env!("CARGO_PKG_VERSION"),
                  "description": "weir's HTTP API: jobs, queues, workers, workflows. GETs need the read or admin token, changes the admin token (when tokens are configured)." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Queue": { "type": "object", "required": ["queue"],
                           "description": "Counts by state with lag and throughput (brokers that keep jobs), or depths (RabbitMQ: ready, delayed, dead)",
                           "properties": { "queue": { "type": "string" },
                                           "pending": { "type": "integer" }, "running": { "type": "integer" }, "retryable": { "type": "integer" },
                                           "succeeded": { "type": "integer" }, "failed": { "type": "integer" }, "cancelled": { "type": "integer" },
                                           "oldest_due": { "type": ["integer", "null"], "description": "ms since the epoch when the longest-waiting runnable job became due" },
                                           "oldest_age_seconds": { "type": "number", "description": "how long it has waited; 0 when none waits" },
                                           "throughput": { "type": ["object", "null"], "description": "jobs finished per second (every worker) over the last minute; null on the first read",
                                                           "properties": { "per_second": { "type": "number" }, "over_seconds": { "type": "number" } } },
                                           "ready": { "type": "integer" }, "delayed": { "type": "integer" }, "dead": { "type": "integer" } } },
                "Job": { "type": "object", "required": ["id", "kind", "queue", "state"],
                         "properties": { "id": { "type": "string" }, "kind": { "type": "string" }, "queue": { "type": "string" },
                                         "state": { "type": "string" }, "attempt": { "type": "integer" }, "max_attempts": { "type": "integer" },
                                         "payload": {}, "result": {}, "last_error": { "type": ["string", "null"] },
                                         "payload_elided": { "type": "object", "description": "in a list page only: the payload was over 64 KiB and is left out (null); get the job by id for it", "properties": { "bytes": { "type": "integer" } } },
                                         "result_elided": { "type": "object", "description": "as payload_elided, for the result", "properties": { "bytes": { "type": "integer" } } } } },
                "NewJob": { "type": "object", "required": ["kind"], "additionalProperties": false,
                            "properties": { "kind": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$" }, "payload": {},
                                            "queue": { "type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[A-Za-z0-9_:-][A-Za-z0-9_.:-]*$" },
                                            "delay": { "type": "string", "description": "e.g. 10s, 1h 30m" },
                                            "max_attempts": { "type": "integer", "minimum": 1 },
                                            "timeout": { "type": "string" }, "unique_key": { "type": "string" },
                                            "priority": { "type": "integer" }, "trace_id": { "type": "string" } } },
                "Enqueued": { "type": "object", "required": ["id", "duplicate"], "properties": { "id": { "type": "string" }, "duplicate": { "type": "boolean" } } }
            }
        },
        "security": [{ "bearer": [] }, {}],
        "paths": {
            "/healthz": { "get": { "summary": "the process is up", "security": [], "responses": { "200": { "description": "ok", "content": { "text/plain": { "schema": { "type": "string" } } } } } } },
            "/readyz": { "get": { "summary": "the broker and store answer", "security": [],
                "responses": { "200": { "description": "ready", "content": { "application/json": { "schema": obj } } },
                               "503": { "description": "not ready, with the reason", "content": { "application/json": { "schema": obj } } } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "responses": {
                "200": { "description": "text format 0.0.4", "content": { "text/plain": { "schema": { "type": "string" } } } },
                "401": { "description": "no or unknown token", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "501": { "description": "metrics off", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } } } } },
            "/openapi.json": { "get": { "summary": "this document", "security": [], "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": { "schema": obj } } } } } },
            "/api/v1/queues": { "get": { "summary": "job counts by queue and state with lag and throughput, or RabbitMQ's queue depths", "responses": ok("queues", json!({ "type": "object", "required": ["queues"], "properties": { "queues": { "type": "array", "items": { "$ref": "#/components/schemas/Queue" } } } }), &read) } },
            "/api/v1/workers": { "get": { "summary": "worker reports", "responses": ok("workers", json!({ "type": "object", "required": ["workers"], "properties": { "workers": { "type": "array" } } }), &read) } },
            "/api/v1/jobs": {
                "get": { "summary": "jobs, newest first",
                    "parameters": [
                        { "name": "state", "in": "query", "schema": { "type": "string", "enum": ["pending", "running", "retryable", "succeeded", "failed", "cancelled"] } },
                        { "name": "queue", "in": "query", "schema": { "type": "string" } },
                        { "name": "kind", "in": "query", "schema": { "type": "string" } },
                        { "name": "since", "in": "query", "description": "created at or after, ms since the epoch", "schema": { "type": "integer" } },
                        { "name": "until", "in": "query", "description": "created before, ms since the epoch", "schema": { "type": "integer" } },
                        { "name": "text", "in": "query", "description": "in the payload or the last error", "schema": { "type": "string", "minLength": 1 } },
                        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } },
                        { "name": "cursor", "in": "query", "description": "`next` of the previous page", "schema": { "type": "string" } } ],
                    "responses": ok("a page of jobs", json!({ "type": "object", "required": ["jobs", "next"], "properties": {
                        "jobs": { "type": "array", "items": { "$ref": "#/components/schemas/Job" } },
                        "next": { "type": ["string", "null"] } } }), &read) },
                "post": { "summary": "enqueue one job (an object) or many (an array), all or nothing",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "oneOf": [
                        { "$ref": "#/components/schemas/NewJob" },
                        { "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/NewJob" } } ] } } } },
                    "responses": created(json!({ "oneOf": [ { "$ref": "#/components/schemas/Enqueued" },
                        { "type": "object", "required": ["jobs"], "properties": { "jobs": { "type": "array", "items": { "$ref": "#/components/schemas/Enqueued" } } } } ] }), &write) } },
            "/api/v1/jobs/{id}": {
                "get": { "summary": "one job", "parameters": id_param("job id"), "responses": ok("the job", json!({ "$ref": "#/components/schemas/Job" }), &read) },
                "delete": { "summary": "delete a finished job", "parameters": id_param("job id"), "responses": ok("the deleted job", json!({ "$ref": "#/components/schemas/Job" }), &write) } },
            "/api/v1/jobs/bulk": { "post": { "summary": "retry, cancel or delete every job matching a filter",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["action"], "additionalProperties": false,
                    "properties": { "action": { "type": "string", "enum": ["retry", "cancel", "delete"] },
                                    "filter": { "type": "object", "additionalProperties": false, "properties": {
                                        "state": { "type": "string" }, "queue": { "type": "string" }, "kind": { "type": "string" },
                                        "since": { "type": "integer" }, "until": { "type": "integer" }, "text": { "type": "string", "minLength": 1 } } },
                                    "max": { "type": "integer", "minimum": 1, "maximum": 100000 },
                                    "cursor": { "type": "string" } } } } } },
                "responses": ok("what was done", json!({ "type": "object", "required": ["action", "matched", "done", "refused", "next"], "properties": {
                    "action": { "type": "string" }, "matched": { "type": "integer" }, "done": { "type": "integer" },
                    "refused": { "type": "array" }, "next": { "type": ["string", "null"] } } }), &write) } },
            "/api/v1/jobs/{id}/retry": { "post": { "summary": "run a finished job again", "parameters": id_param("job id"), "responses": ok("the job", json!({ "$ref": "#/components/schemas/Job" }), &write) } },
            "/api/v1/jobs/{id}/cancel": { "post": { "summary": "cancel a job", "parameters": id_param("job id"), "responses": ok("the job", json!({ "$ref": "#/components/schemas/Job" }), &write) } },
            "/api/v1/workflows": { "post": { "summary": "submit a workflow (the spec `weir workflow submit` takes)",
                "requestBody": { "required": true, "content": { "application/json": { "schema": obj } } },
                "responses": created(json!({ "type": "object", "required": ["id"], "properties": { "id": { "type": "string" } } }), &write) } },
            "/api/v1/workflows/{id}": { "get": { "summary": "a workflow's progress, members and result", "parameters": id_param("workflow id"),
                "responses": ok("the workflow", json!({ "type": "object", "required": ["workflow", "members", "result"], "properties": { "workflow": obj, "members": { "type": "array" }, "result": any } }), &read) } },
            "/api/v1/config": { "get": { "summary": "the configuration file followed, secrets redacted, and whether it is the one in force",
                "responses": ok("the configuration", json!({ "type": "object", "required": ["file", "settings"], "properties": {
                    "file": { "type": ["string", "null"] }, "applied": { "type": "boolean" }, "refused_reloads": { "type": "integer" }, "settings": {} } }), &["401", "503"]) } },
            "/api/v1/audit": { "get": { "summary": "the last state changes made through the API, newest first",
                "responses": ok("entries", json!({ "type": "object", "required": ["entries"], "properties": { "entries": { "type": "array" } } }), &["401"]) } }
        }
    })
}

/// `GET /openapi.json`.
pub(crate) async fn document() -> Json<Value> {
    Json(spec())
}
