//! Shared by the RabbitMQ tests: a broker on a queue namespace of its own, deleted afterwards.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use weir_amqp::AmqpBroker;

/// The RabbitMQ the tests use: `WEIR_TEST_AMQP_URL`, or the local one.
pub fn amqp_url() -> String {
    std::env::var("WEIR_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A fresh namespace, so runs and tests never share a queue.
pub fn prefix() -> String {
    format!("weir-test-{}.", uuid::Uuid::new_v4().simple())
}

/// The URL for a broker in namespace `prefix`, with extra query parameters.
pub fn url_in(prefix: &str, extra: &str) -> String {
    let base = amqp_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}prefix={prefix}{extra}")
}

/// Deletes every queue the broker touched when dropped (from a thread of its own: drop is
/// not async).
pub struct Cleanup(pub Arc<AmqpBroker>, pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = self.0.known_queues();
        let url = url_in(&self.1, "");
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let b = AmqpBroker::new(&url).expect("url");
                if let Err(e) = b.delete_queues(&queues).await {
                    eprintln!("cleanup of {queues:?} failed: {e}");
                }
                b.close().await;
            });
        })
        .join();
    }
}
