//! Per-record delivery futures, backed by one shared completion per batch.
//!
//! A batch holds thousands of records; giving each its own channel would cost an allocation
//! per `send`. Instead every record's [`DeliveryFuture`] points at its batch's
//! [`BatchCompletion`] plus its index in the batch, and the offset is computed on completion
//! as `base_offset + index`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use crate::error::{ClientError, Result};
use crate::record::RecordMetadata;

/// The outcome of one batch, shared by all of its records.
#[derive(Debug)]
pub(crate) struct BatchCompletion {
    topic: Arc<str>,
    partition: u32,
    /// Base offset on success (-1 when the broker reported none).
    result: OnceLock<Result<i64>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchCompletion {
    pub(crate) fn new(topic: Arc<str>, partition: u32) -> Arc<Self> {
        Arc::new(Self {
            topic,
            partition,
            result: OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
        })
    }

    /// Completes the batch and wakes every waiting record; later calls are ignored, so a
    /// batch can never be reported twice.
    pub(crate) fn complete(&self, result: Result<i64>) {
        if self.result.set(result).is_err() {
            return;
        }
        let wakers = std::mem::take(&mut *self.lock_wakers());
        for waker in wakers {
            waker.wake();
        }
    }

    fn lock_wakers(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outcome(&self, index: u32, timestamp_ms: i64) -> Option<Result<RecordMetadata>> {
        let result = self.result.get()?;
        Some(match result {
            Ok(base_offset) => Ok(RecordMetadata {
                topic: Arc::clone(&self.topic),
                partition: self.partition,
                offset: if *base_offset < 0 {
                    -1
                } else {
                    base_offset + i64::from(index)
                },
                timestamp_ms,
            }),
            Err(e) => Err(e.clone()),
        })
    }
}

/// Resolves once the record is acknowledged (or has failed for good).
///
/// Dropping it does not cancel the send.
#[derive(Debug)]
#[must_use = "a DeliveryFuture reports whether the record was written; await it or drop it \
              deliberately"]
pub struct DeliveryFuture {
    state: State,
}

#[derive(Debug)]
enum State {
    Pending {
        completion: Arc<BatchCompletion>,
        index: u32,
        timestamp_ms: i64,
        registered: bool,
    },
    Failed(ClientError),
    Done,
}

impl DeliveryFuture {
    pub(crate) fn pending(completion: Arc<BatchCompletion>, index: u32, timestamp_ms: i64) -> Self {
        Self {
            state: State::Pending {
                completion,
                index,
                timestamp_ms,
                registered: false,
            },
        }
    }

    pub(crate) fn failed(error: ClientError) -> Self {
        Self {
            state: State::Failed(error),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            State::Pending {
                completion,
                index,
                timestamp_ms,
                registered,
            } => {
                if let Some(outcome) = completion.outcome(*index, *timestamp_ms) {
                    this.state = State::Done;
                    return Poll::Ready(outcome);
                }
                let mut wakers = completion.lock_wakers();
                // `complete` sets the result before taking the waker lock, so checking again
                // under the lock cannot miss a completion.
                if let Some(outcome) = completion.outcome(*index, *timestamp_ms) {
                    drop(wakers);
                    this.state = State::Done;
                    return Poll::Ready(outcome);
                }
                if !*registered || !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                    *registered = true;
                }
                Poll::Pending
            }
            State::Failed(_) => match std::mem::replace(&mut this.state, State::Done) {
                State::Failed(error) => Poll::Ready(Err(error)),
                _ => unreachable!("state was just matched as Failed"),
            },
            State::Done => panic!("DeliveryFuture polled after completion"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_proto::v1::ErrorCode;
    use futures::FutureExt;

    #[tokio::test]
    async fn records_get_base_offset_plus_index() {
        let completion = BatchCompletion::new(Arc::from("t"), 3);
        let first = DeliveryFuture::pending(Arc::clone(&completion), 0, 10);
        let third = DeliveryFuture::pending(Arc::clone(&completion), 2, 12);
        completion.complete(Ok(100));
        let third = third.await.expect("batch succeeded");
        assert_eq!(
            (third.partition, third.offset, third.timestamp_ms),
            (3, 102, 12)
        );
        assert_eq!(first.await.expect("batch succeeded").offset, 100);
    }

    #[tokio::test]
    async fn waiting_future_is_woken_by_completion() {
        let completion = BatchCompletion::new(Arc::from("t"), 0);
        let future = DeliveryFuture::pending(Arc::clone(&completion), 1, 0);
        let waiter = tokio::spawn(future);
        tokio::task::yield_now().await;
        completion.complete(Err(ClientError::server(
            ErrorCode::RecordTooLarge,
            "too big",
        )));
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken in time")
            .expect("task did not panic");
        assert_eq!(
            result.expect_err("batch failed").code(),
            Some(ErrorCode::RecordTooLarge)
        );
    }

    #[test]
    fn second_completion_is_ignored_and_a_missing_offset_stays_missing() {
        let completion = BatchCompletion::new(Arc::from("t"), 0);
        completion.complete(Ok(-1));
        completion.complete(Ok(5));
        let metadata = DeliveryFuture::pending(completion, 4, 0)
            .now_or_never()
            .expect("already complete")
            .expect("success");
        assert_eq!(metadata.offset, -1);
    }
}
