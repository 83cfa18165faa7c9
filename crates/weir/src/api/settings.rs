//! `GET /api/v1/config`: the configuration file `weir serve` follows, as JSON, secrets
//! redacted, with whether what is on disk is what runs (a file whose last change was refused
//! is not) and how many reloads were refused.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, ApiState};
use crate::config::Config;

/// Keys whose values are URLs with credentials, shown with the password hidden.
const URL_KEYS: [&str; 2] = ["broker", "store"];

/// Hides what must never leave the process: passwords in URLs, and any value under a key
/// that names a secret.
fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                if ["token", "password", "secret", "key"]
                    .iter()
                    .any(|s| key.contains(s))
                    && !matches!(v, Value::Object(_) | Value::Array(_))
                {
                    *v = Value::String("***".into());
                } else if let (true, Value::String(s)) = (URL_KEYS.contains(&k.as_str()), &*v) {
                    *v = Value::String(weir_core::redact_url(s));
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
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
            "shell": { "allow": ["echo"], "env": ["AWS_REGION"] },
        });
        redact(&mut v);
        let text = v.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(v["api"]["listen"], "127.0.0.1:9090");
        assert_eq!(v["shell"]["allow"][0], "echo");
    }
}
