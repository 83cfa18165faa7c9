use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_core::{Task, TaskContext, TaskError};
use weir_sync::Backoff;

/// A type-erased handler: takes the JSON payload, returns the JSON result (`None` for none).
pub type Handler = Arc<
    dyn Fn(Vec<u8>, TaskContext) -> BoxFuture<'static, Result<Option<Vec<u8>>, TaskError>>
        + Send
        + Sync,
>;

/// Computes limit keys from a job's payload.
type KeyFn = Arc<dyn Fn(&serde_json::Value) -> Vec<String> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Kind {
    pub(crate) handler: Handler,
    pub(crate) backoff: Backoff,
    pub(crate) timeout: Option<Duration>,
    /// Limit keys every job of the kind needs.
    limits: Vec<String>,
    /// Limit keys computed from the payload.
    limits_from: Option<KeyFn>,
}

impl Kind {
    /// The limit keys a job of this kind needs, if any. A payload that is not JSON yields
    /// only the static keys (the handler will reject it anyway).
    pub(crate) fn limit_keys(&self, payload: &[u8]) -> Option<Vec<String>> {
        if self.limits.is_empty() && self.limits_from.is_none() {
            return None;
        }
        let mut keys = self.limits.clone();
        if let Some(f) = &self.limits_from {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
                keys.extend(f(&v));
            }
        }
        Some(keys)
    }
}

/// Handlers by task kind, with their retry policy and timeout.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<String, Kind>,
    default_backoff: Backoff,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds())
            .finish_non_exhaustive()
    }
}

/// Options of one registered kind. Returned by the `register` methods.
pub struct KindOptions<'a> {
    kind: &'a mut Kind,
}

impl KindOptions<'_> {
    /// Sets the retry backoff. By default, the registry's default ([`Backoff::default`] unless
    /// changed with [`Registry::default_backoff`]).
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.kind.backoff = backoff;
        self
    }

    /// Sets the time budget of one attempt, used when the job carries none. A timeout is a
    /// retryable failure. By default, none.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.kind.timeout = Some(timeout);
        self
    }

    /// Every job of this kind needs the limit `key` (e.g. `db`): see
    /// [`weir_sync::Limiter`]. A job whose limits are full is given back to run a little
    /// later, without spending an attempt. By default, no limits.
    pub fn limit(self, key: impl Into<String>) -> Self {
        self.kind.limits.push(key.into());
        self
    }

    /// Each job of this kind needs the limit keys `keys` computes from its JSON payload
    /// (e.g. `tenant:{id}`). By default, none.
    pub fn limit_with(
        self,
        keys: impl Fn(&serde_json::Value) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.kind.limits_from = Some(Arc::new(keys));
        self
    }
}

fn encode<O: Serialize>(kind: &str, out: O) -> Result<Option<Vec<u8>>, TaskError> {
    let bytes = serde_json::to_vec(&out).map_err(|e| {
        TaskError::permanent(format!("result of kind `{kind}` does not encode: {e}"))
    })?;
    Ok((bytes != b"null").then_some(bytes))
}

fn decode<P: DeserializeOwned>(kind: &str, payload: &[u8]) -> Result<P, TaskError> {
    serde_json::from_slice(payload).map_err(|e| {
        TaskError::permanent(format!("payload for kind `{kind}` does not decode: {e}"))
    })
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the backoff of kinds registered afterwards without their own. By default,
    /// [`Backoff::default`].
    pub fn default_backoff(&mut self, backoff: Backoff) -> &mut Self {
        self.default_backoff = backoff;
        self
    }

    /// Registers a typed [`Task`] under `T::KIND`. A payload that does not decode as `T` fails
    /// the job permanently, with a message naming the kind and the decode error.
    pub fn register<T: Task>(&mut self) -> KindOptions<'_> {
        let handler: Handler = Arc::new(|payload, cx| {
            async move {
                let task: T = decode(T::KIND, &payload)?;
                encode(T::KIND, task.run(cx).await?)
            }
            .boxed()
        });
        self.insert(T::KIND, handler)
    }

    /// Registers a plain async function under `kind`; its payload type `P` is decoded from
    /// JSON as for [`register`](Self::register).
    ///
    /// ```
    /// use weir_runtime::Registry;
    /// use weir_core::{TaskContext, TaskError};
    /// let mut r = Registry::new();
    /// r.register_fn("add", |p: (i64, i64), _cx: TaskContext| async move {
    ///     Ok::<_, TaskError>(p.0 + p.1)
    /// });
    /// assert_eq!(r.kinds(), vec!["add"]);
    /// ```
    pub fn register_fn<P, O, F, Fut>(&mut self, kind: &str, f: F) -> KindOptions<'_>
    where
        P: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(P, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, TaskError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let name: Arc<str> = kind.into();
        let handler: Handler = Arc::new(move |payload, cx| {
            let f = f.clone();
            let name = name.clone();
            async move {
                let p: P = decode(&name, &payload)?;
                encode(&name, f(p, cx).await?)
            }
            .boxed()
        });
        self.insert(kind, handler)
    }

    /// Registers an already type-erased handler.
    pub fn register_handler(&mut self, kind: &str, handler: Handler) -> KindOptions<'_> {
        self.insert(kind, handler)
    }

    fn insert(&mut self, kind: &str, handler: Handler) -> KindOptions<'_> {
        let k = Kind {
            handler,
            backoff: self.default_backoff,
            timeout: None,
            limits: Vec::new(),
            limits_from: None,
        };
        let slot = match self.kinds.entry(kind.to_owned()) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                o.insert(k);
                o.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(k),
        };
        KindOptions { kind: slot }
    }

    /// The options of an already registered `kind`, to change them (for example limits read
    /// from a configuration file).
    pub fn configure(&mut self, kind: &str) -> Option<KindOptions<'_>> {
        self.kinds.get_mut(kind).map(|kind| KindOptions { kind })
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Kind> {
        self.kinds.get(kind)
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use tokio_util::sync::CancellationToken;
    use weir_core::JobId;

    #[derive(Serialize, Deserialize)]
    struct Double {
        n: u32,
    }

    impl Task for Double {
        const KIND: &'static str = "double";
        type Output = u32;
        async fn run(self, _cx: TaskContext) -> Result<u32, TaskError> {
            Ok(self.n * 2)
        }
    }

    fn cx() -> TaskContext {
        TaskContext::new(
            JobId::new(),
            "double",
            "q",
            1,
            3,
            "t",
            CancellationToken::new(),
        )
    }

    #[tokio::test]
    async fn typed_task_decodes_and_encodes() {
        let mut r = Registry::new();
        r.register::<Double>();
        let h = r.get("double").unwrap().handler.clone();
        assert_eq!(
            h(br#"{"n":21}"#.to_vec(), cx()).await.unwrap(),
            Some(b"42".to_vec())
        );
    }

    #[tokio::test]
    async fn malformed_payload_fails_permanently_naming_the_kind() {
        let mut r = Registry::new();
        r.register::<Double>();
        let h = r.get("double").unwrap().handler.clone();
        let err = h(br#"{"n":"x"}"#.to_vec(), cx()).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.message()
                .contains("payload for kind `double` does not decode"),
            "{err}"
        );
        let err = h(b"not json".to_vec(), cx()).await.unwrap_err();
        assert!(err.message().contains("`double`"), "{err}");
    }

    #[tokio::test]
    async fn unit_output_stores_no_result() {
        let mut r = Registry::new();
        r.register_fn("unit", |_: serde_json::Value, _| async {
            Ok::<_, TaskError>(())
        });
        let h = r.get("unit").unwrap().handler.clone();
        assert_eq!(h(b"{}".to_vec(), cx()).await.unwrap(), None);
    }
}
