//! Placeholder until the scenario tests land.
