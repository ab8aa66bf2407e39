//! The faults, each a named scenario, and how each one strikes and heals.

use std::time::Duration;

use serde::Serialize;

use super::proxy::Mode;

/// What a proxy stands in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// Every service → RabbitMQ.
    Broker,
    /// user, inventory, payment, order → PostgreSQL.
    Postgres,
    /// catalog, notification → FerretDB.
    FerretDb,
    /// gateway → Redis.
    Redis,
    /// order → payment's gRPC.
    PaymentGrpc,
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// `kill -9` of a service, restarted as the stack started it after a pause.
    Kill { service: &'static str },
    /// A proxy set to `mode` for the outage, then back up.
    Outage { line: Line, mode: Mode },
    /// The client side of every live connection on `line` reset, the server side left open
    /// and silent; reconnecting works at once.
    SilentCut { line: Line },
    /// Orders placed during the outage pay with this test card (payment's simulated provider
    /// misbehaves on it).
    Card { number: &'static str },
    /// payment-service runs with `SIMULATED_FAULT_RATE`/`SIMULATED_FAULT_SEED` from the start:
    /// a seeded share of the approving card's provider calls lose their answer or time out.
    ProviderFaultRate { rate: f64, seed: u64 },
}

/// A named scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub fault: Fault,
}

const fn kill(name: &'static str, service: &'static str, what: &'static str) -> Scenario {
    Scenario {
        name,
        what,
        fault: Fault::Kill { service },
    }
}

/// Every scenario, in the order the full suite runs them.
pub const SCENARIOS: &[Scenario] = &[
    kill(
        "kill-user",
        "user-service",
        "kill -9 of user-service, restarted",
    ),
    kill(
        "kill-notification",
        "notification-service",
        "kill -9 of notification-service, restarted",
    ),
    kill(
        "kill-inventory",
        "inventory-service",
        "kill -9 of inventory-service, restarted",
    ),
    kill(
        "kill-catalog",
        "catalog-service",
        "kill -9 of catalog-service, restarted",
    ),
    kill(
        "kill-payment",
        "payment-service",
        "kill -9 of payment-service, restarted",
    ),
    kill(
        "kill-order",
        "order-service",
        "kill -9 of order-service, restarted",
    ),
    kill(
        "kill-gateway",
        "gateway",
        "kill -9 of the gateway, restarted",
    ),
    Scenario {
        name: "broker-down",
        what: "RabbitMQ unreachable (every service's connection closed, new ones refused), then back",
        fault: Fault::Outage {
            line: Line::Broker,
            mode: Mode::Down,
        },
    },
    Scenario {
        name: "broker-silent-cut",
        what: "every AMQP connection cut on the services' side without the broker knowing (it keeps them until its heartbeat gives up)",
        fault: Fault::SilentCut { line: Line::Broker },
    },
    Scenario {
        name: "postgres-crash",
        what: "PostgreSQL unreachable, every connection reset as by a crash, then back",
        fault: Fault::Outage {
            line: Line::Postgres,
            mode: Mode::Reset,
        },
    },
    Scenario {
        name: "ferretdb-down",
        what: "FerretDB unreachable (catalog, notification), then back",
        fault: Fault::Outage {
            line: Line::FerretDb,
            mode: Mode::Down,
        },
    },
    Scenario {
        name: "redis-down",
        what: "Redis unreachable (the gateway's rate limit and cache), then back",
        fault: Fault::Outage {
            line: Line::Redis,
            mode: Mode::Down,
        },
    },
    Scenario {
        name: "payment-never-answers",
        what: "orders during the outage pay with 4000000000000119: the provider never answers",
        fault: Fault::Card {
            number: "4000000000000119",
        },
    },
    Scenario {
        name: "payment-approval-lost",
        what: "orders during the outage pay with 4000000000000127: the approval is lost on its way back",
        fault: Fault::Card {
            number: "4000000000000127",
        },
    },
    Scenario {
        name: "payment-capture-refused",
        what: "orders during the outage pay with 4000000000000069: the capture is refused (the saga parks)",
        fault: Fault::Card {
            number: "4000000000000069",
        },
    },
    Scenario {
        name: "payment-fault-rate",
        what: "payment's provider loses or times out 20 % of the approving card's answers (SIMULATED_FAULT_RATE=0.2, seed 7), the whole run",
        fault: Fault::ProviderFaultRate { rate: 0.2, seed: 7 },
    },
    Scenario {
        name: "partition-order-payment",
        what: "network partition between order-service and payment's gRPC (nothing crosses, nothing closes), then healed",
        fault: Fault::Outage {
            line: Line::PaymentGrpc,
            mode: Mode::Blackhole,
        },
    },
];

pub fn by_name(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|scenario| scenario.name == name)
}

/// When the fault strikes and how long it lasts, and the load around it.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Orders per second offered through the gateway (and as many product reads).
    pub rate: f64,
    pub users: usize,
    pub connections: usize,
    /// The whole load.
    pub load: Duration,
    /// From the start of the load to the fault.
    pub strike_at: Duration,
    /// How long an outage lasts (proxies, cards).
    pub outage: Duration,
    /// How long a killed service stays down before it is started again.
    pub down: Duration,
    /// How long after the fault healed every invariant must hold.
    pub settle_within: Duration,
}

impl Timing {
    /// 20 orders/s (and as many product reads), the rate the faults were first tried at by
    /// hand. Settling is bounded at 300 s: the mail leg is the slowest to catch up (one
    /// confirmation per order; at 20/s on this machine's two cores, shared with builds, the
    /// last mails of a run arrived 110–180 s after the load, more when a fault held them up),
    /// and "exactly one mail per order event" can only be judged once they are all in.
    pub fn full() -> Self {
        Self {
            rate: 20.0,
            users: 6,
            connections: 32,
            load: Duration::from_secs(45),
            strike_at: Duration::from_secs(10),
            outage: Duration::from_secs(15),
            down: Duration::from_secs(5),
            settle_within: Duration::from_secs(300),
        }
    }

    /// `make test`'s: a few seconds at a low rate.
    pub fn quick() -> Self {
        Self {
            rate: 4.0,
            users: 2,
            connections: 8,
            load: Duration::from_secs(12),
            strike_at: Duration::from_secs(2),
            outage: Duration::from_secs(2),
            down: Duration::from_secs(1),
            settle_within: Duration::from_secs(60),
        }
    }
}
