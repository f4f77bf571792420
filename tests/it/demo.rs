//! The one-command demo (README) runs to the end and tells the story: embedded broker, agent, cloud worker,
//! operator; inference and cache, hard cases, a signed update under load, a tampered bundle, a bad model rolled back,
//! a cut link whose hard cases arrive later.
#![cfg(feature = "demo")]

use crate::common;

#[test]
fn the_demo_tells_the_whole_story_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-demo"))
        .current_dir(common::repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "| cache hits on repeats | 300/300 |",
        "| v2 update | fetched, installed, committed |",
        "| tampered bundle | refused |",
        "| bad model v4 | rolled back on probation |",
        "| requests failed during updates | 0 of",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    let outage = stdout
        .lines()
        .find(|l| l.starts_with("| hard cases during the outage |"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let n: Vec<&str> = outage
        .split(' ')
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert!(n.len() == 2 && n[0] == n[1] && n[0] != "0", "{outage}");
}
