//! Arbitrary bytes as a signed fleet command (the MQTT command topic's payload): decoded and verified as a device
//! does, and re-signed to reach the checks behind the signature. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_fuzz::run_command(data);
});
