//! The configuration every property test of the crate runs with: a fixed case count per suite
//! and a fixed seed, so that CI runs the same cases every time, and no failure-persistence
//! files (a counterexample found is kept as a named regression test instead).

use proptest::test_runner::{Config, RngSeed};

/// The seed of every property test.
pub const SEED: u64 = 0x006b_6174_6176_656e; // "kataven" in ASCII

/// A config that runs `cases` cases from the fixed seed.
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(SEED),
        failure_persistence: None,
        ..Config::default()
    }
}
