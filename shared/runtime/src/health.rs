//! Liveness and readiness.
//!
//! * `/healthz` answers 200 while the process can serve HTTP at all. It checks nothing else:
//!   an orchestrator restarts a process whose liveness fails, and restarting does not fix a
//!   database outage.
//! * `/readyz` runs every registered probe (its stores, its broker, its consumers) concurrently,
//!   each with a short timeout, and answers 503 as a problem document naming the failing ones,
//!   so a load balancer stops sending traffic until they recover. It also answers 503 while the
//!   service drains during shutdown.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, extract::State, response::IntoResponse};
use futures::future::{BoxFuture, join_all};
use serde::Serialize;

use crate::error::{ApiError, ErrorKind};

/// How long one probe may take before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type ProbeFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The registry of readiness probes of one service.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Arc<RwLock<Vec<(String, ProbeFn)>>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .probes
            .read()
            .map(|p| p.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        f.debug_struct("Readiness").field("probes", &names).finish()
    }
}

/// The outcome of one readiness check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub ready: bool,
    /// Probe name → `"up"` or `"down"`.
    pub checks: BTreeMap<String, &'static str>,
}

impl Readiness {
    /// Registers a probe: an async check that is `Ok(())` when the dependency is usable.
    pub fn add<F, Fut>(&self, name: impl Into<String>, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let probe: ProbeFn = Arc::new(move || Box::pin(probe()));
        if let Ok(mut probes) = self.probes.write() {
            probes.push((name.into(), probe));
        }
    }

    /// Marks the service as shutting down: readiness fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Runs all probes concurrently.
    pub async fn check(&self) -> Report {
        let probes = self.probes.read().map(|p| p.clone()).unwrap_or_default();
        let results = join_all(probes.into_iter().map(|(name, probe)| async move {
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
                Ok(Ok(())) => "up",
                Ok(Err(reason)) => {
                    tracing::warn!(probe = %name, %reason, "readiness probe failed");
                    "down"
                }
                Err(_) => {
                    tracing::warn!(probe = %name, "readiness probe timed out");
                    "down"
                }
            };
            (name, outcome)
        }))
        .await;
        let checks: BTreeMap<_, _> = results.into_iter().collect();
        let ready = !self.is_draining() && checks.values().all(|status| *status == "up");
        Report { ready, checks }
    }
}

/// `GET /healthz`.
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "alive" }))
}

/// `GET /readyz`.
pub async fn readyz(State(readiness): State<Readiness>) -> axum::response::Response {
    let report = readiness.check().await;
    if report.ready {
        return Json(serde_json::json!({ "status": "ready", "checks": report.checks }))
            .into_response();
    }
    let detail = if readiness.is_draining() {
        "The service is shutting down.".to_owned()
    } else {
        let down: Vec<&str> = report
            .checks
            .iter()
            .filter(|(_, status)| **status != "up")
            .map(|(name, _)| name.as_str())
            .collect();
        format!("Dependencies unavailable: {}.", down.join(", "))
    };
    ApiError::new(ErrorKind::Unavailable, detail)
        .with_extension("checks", serde_json::json!(report.checks))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_probe_is_up() {
        let readiness = Readiness::default();
        readiness.add("good", || async { Ok(()) });
        assert!(readiness.check().await.ready);

        readiness.add("bad", || async { Err("refused".to_owned()) });
        let report = readiness.check().await;
        assert!(!report.ready);
        assert_eq!(report.checks["bad"], "down");
        assert_eq!(report.checks["good"], "up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_counts_as_down() {
        let readiness = Readiness::default();
        readiness.add("slow", || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        });
        assert_eq!(readiness.check().await.checks["slow"], "down");
    }

    #[tokio::test]
    async fn draining_is_not_ready() {
        let readiness = Readiness::default();
        readiness.start_draining();
        assert!(!readiness.check().await.ready);
    }
}
