//! openraft's async runtime for the metadata quorum: tokio, with one change. openraft draws
//! each election timeout from the runtime's thread-local RNG; with tokio's default that RNG
//! is seeded from the OS and a run can never be replayed. Here the RNG is ours: seeded from
//! the OS unless a test reseeds it with [`seed_election_rng`], which is what lets the
//! quorum simulation replay a failing seed exactly.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand08::rngs::StdRng;
use rand08::{RngCore, SeedableRng};

thread_local! {
    static ELECTION_RNG: RefCell<StdRng> = RefCell::new(StdRng::from_entropy());
}

/// Reseeds the election-timeout RNG of the calling thread. A single-threaded runtime that
/// runs every Raft node of a test on this thread then draws the same timeouts on every run.
pub fn seed_election_rng(seed: u64) {
    ELECTION_RNG.with(|rng| *rng.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// A handle to the calling thread's election RNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct ElectionRng;

impl RngCore for ElectionRng {
    fn next_u32(&mut self) -> u32 {
        ELECTION_RNG.with(|rng| rng.borrow_mut().next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        ELECTION_RNG.with(|rng| rng.borrow_mut().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        ELECTION_RNG.with(|rng| rng.borrow_mut().fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        ELECTION_RNG.with(|rng| rng.borrow_mut().try_fill_bytes(dest))
    }
}

/// tokio, with a reseedable election RNG.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FerrologRuntime;

type Tokio = TokioRuntime;

impl AsyncRuntime for FerrologRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ElectionRng;
    type OneshotSender<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ElectionRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        Tokio::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use rand08::Rng;

    use super::*;

    #[test]
    fn a_reseeded_thread_draws_the_same_timeouts_again() {
        seed_election_rng(7);
        let first: Vec<u64> = (0..5)
            .map(|_| FerrologRuntime::thread_rng().gen_range(150..300))
            .collect();
        seed_election_rng(7);
        let again: Vec<u64> = (0..5)
            .map(|_| FerrologRuntime::thread_rng().gen_range(150..300))
            .collect();
        assert_eq!(first, again);
        assert!(first.iter().all(|t| (150..300).contains(t)));
    }
}
