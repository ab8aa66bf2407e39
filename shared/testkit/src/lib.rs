//! Everything a test needs to run a service against real infrastructure, in parallel with
//! other tests, without stepping on them.
//!
//! * [`infra`]: where PostgreSQL, MongoDB, Redis and RabbitMQ are. The URLs come from
//!   `TESTKIT_*` environment variables (set by `make test` from the native stack), or, when
//!   unset, from containers started once per test process with `testcontainers`.
//! * [`isolation`]: a fresh PostgreSQL database, MongoDB database, Redis key prefix or RabbitMQ
//!   vhost per test, so tests never see each other's data.
//! * [`app`]: starts any [`shop_runtime::Service`] in-process on random ports, wired to
//!   isolated stores, and hands back its addresses.
//! * [`proxy`]: a TCP proxy between a service and a dependency that a test can cut and
//!   restore, to inject "the database/broker went away" faults.
//! * [`contract`]: every answer a test receives from a service is checked against that
//!   service's OpenAPI document; [`http_client`] for a test's own client.
//! * [`wait`]: [`eventually`], the bounded wait every test uses instead of sleeping.

pub mod app;
pub mod contract;
pub mod infra;
pub mod isolation;
pub mod ops;
pub mod process;
pub mod proxy;
pub mod wait;

pub use app::{TestApp, spawn, spawn_with};
pub use contract::http_client;
pub use wait::eventually;

/// Errors in test setup; tests just `?` or `expect` them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
