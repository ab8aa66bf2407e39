//! Password hashing with Argon2id, off the async runtime.
//!
//! Argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: the OWASP recommendation) takes
//! tens of milliseconds of CPU on purpose. Done on an async worker thread it would stall every
//! other request scheduled there, so it runs on tokio's blocking pool — and behind a semaphore,
//! because the blocking pool grows to hundreds of threads and each hash holds 19 MiB: a login
//! burst must queue, not exhaust the memory of the pod. The queue itself is bounded too
//! ([`Limiter`]): past it, 503 with `Retry-After`.
//!
//! Those 19 MiB are freed after each hash, but glibc keeps a freed block that large resident
//! unless its mmap threshold is fixed: the service runs with `GLIBC_TUNABLES` set for that
//! (docs/adr/0014-malloc-mmap-threshold.md), which halves its idle memory.

use std::sync::Arc;

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier},
};
use shop_runtime::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Hashes and checks passwords. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Passwords {
    limiter: Limiter,
    /// A hash of a random password, checked when the email is unknown so that "no such
    /// account" costs the same time as "wrong password" and the two cannot be told apart.
    dummy_hash: Arc<str>,
}

impl Passwords {
    /// One hashing slot per core, and up to `queue` hashes waiting for one.
    pub async fn new(queue: usize) -> Result<Self, ApiError> {
        let parallelism = std::thread::available_parallelism().map_or(2, usize::from);
        let limiter = Limiter::new(parallelism, queue);
        let random = uuid::Uuid::new_v4().to_string();
        let dummy_hash = limiter.run(move || hash(&random)).await??;
        Ok(Self {
            limiter,
            dummy_hash: dummy_hash.into(),
        })
    }

    /// The PHC string for `password`, with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.limiter.run(move || hash(&password)).await?
    }

    /// Whether `password` matches `stored`; with `None` (no such account) it checks against
    /// the dummy hash and answers `false`, taking the same time.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .limiter
            .run(move || {
                Argon2::default()
                    .verify_password(password.as_bytes(), stored.as_str())
                    .is_ok()
            })
            .await?;
        Ok(known && matches)
    }
}

fn hash(password: &str) -> Result<String, ApiError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| ApiError::internal(std::io::Error::other(format!("argon2: {err}"))))
}

/// Bounds the hashing work in flight *and* the requests waiting for it.
///
/// Two rules make the bound hold even against clients that disconnect:
///
/// * the slot (`running`) is moved **into** the blocking task and released when the hash ends.
///   Held by the request future instead, it would be released when a client hangs up — while
///   the hash, which cannot be cancelled, keeps running — and a client that connects, sends a
///   login and disconnects in a loop would run unbounded hashes at once;
/// * waiting is bounded (`admitted`): a request that finds `slots + queue` hashes admitted is
///   answered 503 with `Retry-After` at once, instead of queueing without limit while its
///   client times out anyway.
#[derive(Debug, Clone)]
pub struct Limiter {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
}

impl Limiter {
    /// `slots` hashes at a time, `queue` more waiting.
    pub fn new(slots: usize, queue: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(slots)),
            admitted: Arc::new(Semaphore::new(slots + queue)),
        }
    }

    /// Runs `work` on the blocking pool once a slot is free; 503 when too many are waiting.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(move || {
            let _slot: (OwnedSemaphorePermit, OwnedSemaphorePermit) = (running, admitted);
            work()
        })
        .await
        .map_err(ApiError::internal)
    }

    /// Free hashing slots (for tests and metrics).
    pub fn free_slots(&self) -> usize {
        self.running.available_permits()
    }
}

/// The answer when the hashing queue is full: retry shortly (the `Retry-After` header is added
/// to every 503 of this service, see `api::router`).
fn busy() -> ApiError {
    metrics::counter!("user_password_hashing_refused_total").increment(1);
    ApiError::unavailable("Too many sign-ins are being checked right now; retry in a second.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_salted_argon2id_and_verify() {
        let passwords = Passwords::new(4).await.unwrap();
        let first = passwords
            .hash("correct horse battery".into())
            .await
            .unwrap();
        let second = passwords
            .hash("correct horse battery".into())
            .await
            .unwrap();
        assert!(first.starts_with("$argon2id$v=19$"), "{first}");
        assert_ne!(first, second, "a fresh salt each time");
        assert!(
            passwords
                .verify("correct horse battery".into(), Some(first.clone()))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("wrong horse battery".into(), Some(first))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("correct horse battery".into(), None)
                .await
                .unwrap()
        );
    }

    /// A hash whose client disconnects keeps its slot until the hash is done, and a full queue
    /// answers 503 at once.
    #[tokio::test]
    async fn a_dropped_request_keeps_its_slot_until_the_hash_ends() {
        let limiter = Limiter::new(1, 0);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        // Stands for a hash that takes as long as the test wants.
        let request = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                limiter
                    .run(move || {
                        let _ = started_tx.send(());
                        let _ = wait.recv();
                    })
                    .await
            }
        });
        started.await.unwrap();
        // The client hangs up: its request future is dropped mid-hash.
        request.abort();
        let _ = request.await;

        assert_eq!(
            limiter.free_slots(),
            0,
            "the hash still runs, so its slot is taken"
        );
        let refused = limiter.run(|| ()).await.unwrap_err();
        assert_eq!(refused.kind(), shop_runtime::ErrorKind::Unavailable);

        release.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while limiter.free_slots() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot was never freed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        limiter.run(|| ()).await.unwrap();
    }

    #[tokio::test]
    async fn waiting_is_bounded() {
        let limiter = Limiter::new(1, 1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let running = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                limiter
                    .run(move || {
                        let _ = started_tx.send(());
                        let _ = wait.recv();
                    })
                    .await
            }
        });
        started.await.unwrap();
        // One may wait for the slot...
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.run(|| 42).await }
        });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while limiter.admitted.available_permits() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // ...the next one is told to come back later.
        let refused = limiter.run(|| 0).await.unwrap_err();
        assert_eq!(refused.kind(), shop_runtime::ErrorKind::Unavailable);
        release.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), 42);
    }
}
