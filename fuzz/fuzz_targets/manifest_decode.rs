//! Arbitrary bytes as the two postcard sections (`u16 LE manifest length | manifest | signature list`), framed and
//! decoded by `read_header_unverified`; a manifest that decodes is then signed with the trusted fixed key so the
//! checks behind the signature (`verify_manifest`: shape, spec, expiry, agent version) are fuzzed as well.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_fuzz::run_manifest(data);
});
