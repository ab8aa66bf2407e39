//! The crate's integration tests, one module per file beside this one, linked into one test
//! binary: each test binary links the whole dependency graph again, so one per file cost
//! gigabytes of disk and minutes of linking on a two-core CI machine. `contracts.rs` stays its
//! own binary (`make contracts SERVICE=…` runs it alone), and so does each file that installs a process-wide subscriber.

mod ferretdb_id_index;
mod graceful_shutdown;
mod grpc_balance;
mod grpc_tls;
mod http_server;
mod lifecycle;
mod migrate_command;
mod support;
