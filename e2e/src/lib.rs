//! End-to-end tests live in `tests/`: they start the whole system and drive it through the
//! gateway as a user would. This library is intentionally empty.
