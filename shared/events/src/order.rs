//! The events order-service publishes. Declared by order-service's work; empty until then.
