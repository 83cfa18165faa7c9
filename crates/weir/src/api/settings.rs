//! `GET /api/v1/config`: the configuration file `weir serve` follows, as JSON, secrets
//! redacted, with whether what is on disk is what runs (a file whose last change was refused
//! is not) and how many reloads were refused.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, ApiState};
use crate::config::Config;

/// Hides what must never leave the process: the password of every URL (whatever its key,
/// even a misspelled one in a refused file), and every value under a key that names a secret.
fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                if ["token", "password", "secret", "credential"]
                    .iter()
                    .any(|s| key.contains(s))
                {
                    hide(v);
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) if s.contains("://") || s.contains("password=") => {
            *s = weir_core::redact_url(s);
        }
        _ => {}
    }
}

/// Replaces every scalar under `v` with `***`.
fn hide(v: &mut Value) {
    match v {
        Value::Object(map) => map.values_mut().for_each(hide),
        Value::Array(items) => items.iter_mut().for_each(hide),
        other => *other = Value::String("***".into()),
    }
}

/// `GET /api/v1/config`.
pub(crate) async fn show(State(st): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let Some(live) = &st.live else {
        return Ok(Json(json!({ "file": null, "settings": null })));
    };
    let path = live.path().to_owned();
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("reading {}: {e}", path.display()),
        )
    })?;
    let applied = Config::parse(&path, &text).is_ok_and(|c| c == *live.current());
    let mut settings = match toml::from_str::<toml::Value>(&text) {
        Ok(t) => serde_json::to_value(t).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    redact(&mut settings);
    Ok(Json(json!({
        "file": path.display().to_string(),
        "applied": applied,
        "refused_reloads": live.failures(),
        "settings": settings,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_leave() {
        let mut v = json!({
            "broker": "amqp://weir:hunter2@mq/%2f",
            "store": "postgres://db/weir?password=hunter2",
            "api": { "admin_token": "hunter2", "listen": "127.0.0.1:9090" },
            "brokr": "amqp://weir:hunter2@mq/%2f",
            "tokens": ["hunter2"],
            "shell": { "allow": ["echo"], "env": ["AWS_REGION"] },
        });
        redact(&mut v);
        let text = v.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(v["api"]["listen"], "127.0.0.1:9090");
        assert_eq!(v["shell"]["allow"][0], "echo");
    }
}
