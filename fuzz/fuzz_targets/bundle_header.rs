//! Arbitrary bytes as a whole bundle file: `read_header` under a policy that trusts one fixed key, then, if the
//! header verifies, every variant through `copy_variant` and `expect_end`. Must never panic and never allocate past
//! the caps (run with `-rss_limit_mb` / `-malloc_limit_mb`, see scripts/fuzz.sh).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_fuzz::run_bundle(data);
});
