//! Pins the thread-safety of public types: a change that makes one of them `!Send` or `!Sync`
//! fails to compile here instead of in a user's code.

#![allow(dead_code)]

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<weir::SqliteBroker>();
    send_sync::<weir::MemoryBroker>();
    send_sync::<weir::Client>();
    send_sync::<weir::Registry>();
    send_sync::<weir::Job>();
    send_sync::<weir::NewJob>();
    send_sync::<weir::JobId>();
    send_sync::<weir::TaskContext>();
    send_sync::<weir::TaskError>();
    send_sync::<weir::BrokerError>();
    send_sync::<weir::Backoff>();
    send_sync::<weir::WorkerReport>();
    send_sync::<std::sync::Arc<dyn weir::Broker>>();
    send::<weir::Worker>();
}

#[test]
fn worker_run_future_is_send() {
    fn future_is_send<F: std::future::Future + Send>(_: F) {}
    let broker: std::sync::Arc<dyn weir::Broker> = std::sync::Arc::new(weir::MemoryBroker::new());
    let worker = weir::Worker::builder(broker, weir::Registry::new())
        .build()
        .unwrap();
    future_is_send(worker.run(async {}));
}
