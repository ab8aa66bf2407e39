//! Graceful shutdown.
//!
//! One [`CancellationToken`] per service is cancelled by SIGTERM or SIGINT. Everything
//! long-running watches it: the HTTP server stops accepting and finishes in-flight requests,
//! the gRPC server does the same, readiness turns red, consumers stop taking new messages and
//! finish the current one, relays finish their batch. The runtime then waits for all of them,
//! up to `SHUTDOWN_GRACE_SECONDS`, before the process exits.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `token` when the process receives SIGTERM (what orchestrators send) or SIGINT
/// (Ctrl-C).
///
/// The handlers are installed before this function returns — not lazily in the spawned task —
/// so a signal that arrives right after start is never lost (nor kills the process).
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("received SIGTERM, shutting down"),
            _ = interrupt.recv() => tracing::info!("received SIGINT, shutting down"),
        }
        token.cancel();
    });
    Ok(())
}
