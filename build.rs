//! Sets `OUTPOST_BUILD_UNIX`: the time this source was committed, the lowest bound of "now" the agent ever assumes
//! (its time floor starts there, see `src/clock`). Reproducible: `SOURCE_DATE_EPOCH` when the builder sets it (as
//! Debian's and most reproducible-build tooling does), else the commit time of `HEAD`, else 0 (the library then
//! falls back to a date written in its source). Never the wall clock of the build machine, which would make two
//! builds of one source differ and could itself be wrong.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // A new commit (or checkout) changes the reflog of HEAD; when there is no git, cargo reruns this cheap script.
    println!("cargo:rerun-if-changed=.git/logs/HEAD");
    let from_env = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let from_git = || {
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let unix = from_env.or_else(from_git).unwrap_or(0);
    println!("cargo:rustc-env=OUTPOST_BUILD_UNIX={unix}");
}
