//! Bounded fan-out of tasks on an [`Env`]: the file system and the scrubber both send many record
//! requests at once and must never have more than a fixed number in flight.

use std::future::Future;

use tokio::sync::mpsc;

use super::Env;

/// Run `make(item)` for every item with at most `limit` in flight; results in item order.
/// Runs in batches so a huge list (the chunks of a 4 GiB file) never has more than `limit`
/// tasks alive.
pub async fn fan_out<E, T, R, F, Fut>(env: &E, items: Vec<T>, limit: usize, make: F) -> Vec<R>
where
    E: Env,
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    assert!(limit > 0);
    let total = items.len();
    let mut results: Vec<Option<R>> = (0..total).map(|_| None).collect();
    let mut items = items.into_iter().enumerate().peekable();
    while items.peek().is_some() {
        let (sender, mut receiver) = mpsc::channel(limit);
        let mut launched = 0;
        for (index, item) in items.by_ref().take(limit) {
            let future = make(item);
            let sender = sender.clone();
            env.spawn(async move {
                let result = future.await;
                let _ = sender.send((index, result)).await;
            });
            launched += 1;
        }
        drop(sender);
        let mut received = 0;
        while let Some((index, result)) = receiver.recv().await {
            results[index] = Some(result);
            received += 1;
        }
        assert_eq!(received, launched, "a fan-out task ended without answering");
    }
    results
        .into_iter()
        .map(|result| result.expect("every item answered"))
        .collect()
}
