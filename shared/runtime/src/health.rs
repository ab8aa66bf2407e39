//! Liveness and readiness.
//!
//! * `/healthz` answers 200 while the process can serve HTTP at all. It checks nothing else:
//!   an orchestrator restarts a process whose liveness fails, and restarting does not fix a
//!   database outage.
//! * `/readyz` runs every registered probe concurrently, each with a short timeout, and answers
//!   503 as a problem document naming the failing ones, so a load balancer stops sending
//!   traffic until they recover. It also answers 503 while the service drains during shutdown.
//!   Only what the service needs to *answer requests* is required ([`Readiness::add`]: its
//!   databases). Dependencies it can answer without are *reported* ([`Readiness::report`]):
//!   they appear in `checks` (and in `optional`) but do not make the service unready. The broker
//!   is one: a producer keeps accepting writes while RabbitMQ is down, because its outbox holds
//!   the events until the broker is back; taking every replica out of the load balancer then
//!   would turn a broker outage into a full outage.

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

/// One registered probe: its name, whether readiness requires it, and the check.
type Probe = (String, bool, ProbeFn);

/// The registry of readiness probes of one service.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Arc<RwLock<Vec<Probe>>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .probes
            .read()
            .map(|p| p.iter().map(|(n, _, _)| n.clone()).collect())
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
    /// The probes that are reported but not required (see [`Readiness::report`]).
    pub optional: Vec<String>,
}

impl Readiness {
    /// Registers a probe: an async check that is `Ok(())` when the dependency is usable.
    /// The service is not ready while it fails.
    pub fn add<F, Fut>(&self, name: impl Into<String>, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.register(name.into(), true, Arc::new(move || Box::pin(probe())));
    }

    /// Registers a probe that is reported in `/readyz` (and logged when down) but does not make
    /// the service unready: a dependency the service can answer requests without.
    pub fn report<F, Fut>(&self, name: impl Into<String>, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.register(name.into(), false, Arc::new(move || Box::pin(probe())));
    }

    fn register(&self, name: String, required: bool, probe: ProbeFn) {
        if let Ok(mut probes) = self.probes.write() {
            probes.push((name, required, probe));
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
        let optional: Vec<String> = probes
            .iter()
            .filter(|(_, required, _)| !required)
            .map(|(name, _, _)| name.clone())
            .collect();
        let results = join_all(
            probes
                .into_iter()
                .map(|(name, required, probe)| async move {
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
                    (name, required, outcome)
                }),
        )
        .await;
        let ready = !self.is_draining()
            && results
                .iter()
                .all(|(_, required, status)| !required || *status == "up");
        let checks = results
            .into_iter()
            .map(|(name, _, status)| (name, status))
            .collect();
        Report {
            ready,
            checks,
            optional,
        }
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
        return Json(serde_json::json!({
            "status": "ready",
            "checks": report.checks,
            "optional": report.optional,
        }))
        .into_response();
    }
    let detail = if readiness.is_draining() {
        "The service is shutting down.".to_owned()
    } else {
        let down: Vec<&str> = report
            .checks
            .iter()
            .filter(|(name, status)| **status != "up" && !report.optional.contains(name))
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

    #[tokio::test]
    async fn a_reported_probe_that_is_down_does_not_make_the_service_unready() {
        let readiness = Readiness::default();
        readiness.add("database", || async { Ok(()) });
        readiness.report("broker", || async { Err("refused".to_owned()) });
        let report = readiness.check().await;
        assert!(report.ready);
        assert_eq!(report.checks["broker"], "down");
        assert_eq!(report.optional, vec!["broker".to_owned()]);
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
