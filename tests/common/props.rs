//! The one seed policy of every proptest in the tree: deterministic like the
//! rest of the suite (a fixed seed unless `PROPTEST_RNG_SEED` asks for another,
//! so a failure on CI replays locally), and no regression file written into the
//! tree (a seed that caught a bug becomes a named test case instead).

use proptest::test_runner::{Config, RngSeed};

/// The seed used unless `PROPTEST_RNG_SEED` is set.
pub const SEED: u64 = 0x5eed_f11b;

/// A proptest configuration running `cases` cases under the policy above.
pub fn config(cases: u32) -> Config {
    let mut config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config
}
