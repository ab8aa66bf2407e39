//! Password hashing with Argon2id, off the async runtime.
//!
//! Argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: the OWASP recommendation) takes
//! tens of milliseconds of CPU on purpose. Done on an async worker thread it would stall every
//! other request scheduled there, so it runs on tokio's blocking pool — and behind a semaphore,
//! because the blocking pool grows to hundreds of threads and each hash holds 19 MiB: a login
//! burst must queue, not exhaust the memory of the pod.

use std::sync::Arc;

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier},
};
use shop_runtime::ApiError;
use tokio::sync::Semaphore;

/// Hashes and checks passwords. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// A hash of a random password, checked when the email is unknown so that "no such
    /// account" costs the same time as "wrong password" and the two cannot be told apart.
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub async fn new() -> Result<Self, ApiError> {
        let parallelism = std::thread::available_parallelism().map_or(2, usize::from);
        let permits = Arc::new(Semaphore::new(parallelism));
        let random = uuid::Uuid::new_v4().to_string();
        let dummy_hash = run(&permits, move || hash(&random)).await??;
        Ok(Self {
            permits,
            dummy_hash: dummy_hash.into(),
        })
    }

    /// The PHC string for `password`, with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        run(&self.permits, move || hash(&password)).await?
    }

    /// Whether `password` matches `stored`; with `None` (no such account) it checks against
    /// the dummy hash and answers `false`, taking the same time.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = run(&self.permits, move || {
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

/// Runs `work` on the blocking pool once a permit is free.
async fn run<T: Send + 'static>(
    permits: &Semaphore,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = permits.acquire().await.map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_salted_argon2id_and_verify() {
        let passwords = Passwords::new().await.unwrap();
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
}
