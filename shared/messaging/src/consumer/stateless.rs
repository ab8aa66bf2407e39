//! A consumer without an inbox, for effects that are idempotent by their nature.
//!
//! An inbox exists to turn "at least once" into "effectively once" for effects that would do
//! harm if applied twice (a second stock row, a second email). Some effects are harmless to
//! repeat: deleting a cache entry, setting a flag to the value the event carries. Applying them
//! twice is the same as applying them once, so recording event ids would only add a store the
//! consumer does not otherwise need (the gateway, for instance, has Redis and no database).
//!
//! ```ignore
//! Consumer::stateless("gateway")
//!     .on::<PriceChanged>(InvalidateCache { cache })
//!     .spawn(ctx).await?;
//! ```
//!
//! Everything else is as for the other consumers: ack after the handler returned, retries
//! through the delay queues, parking with the reason. Use it only when the effect really is
//! idempotent; a handler that is not belongs on [`super::postgres`] or [`super::mongo`].

use std::{marker::PhantomData, time::Duration};

pub use super::mongo::Handle;
use super::{
    BoxFuture, HandlerError, Outcome, RouteInfo,
    mongo::{Route, Typed},
    sealed,
};
use crate::{Consumer, Envelope, Error, Event};

/// The handlers of a consumer that keeps no record of what it handled.
pub struct NoInbox {
    routes: Vec<(RouteInfo, Box<dyn Route>)>,
}

impl std::fmt::Debug for NoInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<&RouteInfo> = self.routes.iter().map(|(info, _)| info).collect();
        f.debug_struct("NoInbox").field("routes", &routes).finish()
    }
}

impl Consumer<NoInbox> {
    /// A consumer named `name` whose handlers are idempotent by themselves.
    pub fn stateless(name: impl Into<String>) -> Self {
        Self::with_inbox(name, NoInbox { routes: Vec::new() })
    }

    /// Handles events of type `E` (its routing key becomes a binding of the queue).
    pub fn on<E: Event>(mut self, handler: impl Handle<E>) -> Self {
        self.inbox.routes.push((
            RouteInfo::of::<E>(),
            Box::new(Typed {
                handler,
                _event: PhantomData,
            }),
        ));
        self
    }
}

impl sealed::Sealed for NoInbox {}

impl super::Inbox for NoInbox {
    fn install(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn routes(&self) -> Vec<RouteInfo> {
        self.routes.iter().map(|(info, _)| *info).collect()
    }

    fn dispatch<'a>(
        &'a self,
        _consumer: &'a str,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            let Some((_, route)) = self.routes.iter().find(|(info, _)| info.matches(&envelope))
            else {
                return Ok(Outcome::Unhandled);
            };
            route.call(envelope).await?;
            Ok(Outcome::Handled)
        })
    }

    fn prune<'a>(
        &'a self,
        _consumer: &'a str,
        _age: Duration,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async { Ok(0) })
    }
}
