//! The user journeys of the public API, through the gateway only, against the whole system.
//!
//! One test binary, so one system for all of them (see the `e2e` crate docs: booted in-process
//! once, or the stack at `E2E_BASE_URL`). Each journey starts a [`e2e::client`] of its own and
//! creates its own customers and products, so they run in parallel without seeing each other.
//!
//! | module | journeys |
//! |---|---|
//! | [`shopping`] | order → `CONFIRMED` → email, stock, captured payment; declined card; out of stock; `Idempotency-Key` retry |
//! | [`accounts`] | refresh-token rotation and reuse; login brute force meets 429; one customer cannot see another's orders or payments; customers are refused admin routes |
//! | [`catalog`] | an admin's new product and new price are listed once their events invalidate the gateway's cache; the edge publishes nothing internal |

#![allow(clippy::unwrap_used)] // a failed unwrap in a journey is a failed journey

mod accounts;
mod catalog;
mod shopping;
