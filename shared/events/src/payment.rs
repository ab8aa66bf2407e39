//! The events payment-service publishes. Declared by payment-service's work; empty until then.
