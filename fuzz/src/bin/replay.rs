//! Triage: `replay <bundle_header|manifest_decode> <file or dir>...` runs each input through the harness body (no
//! libFuzzer) and prints `<size>\t<verdict>\t<path>`, the verdict being `accepted` or the error. A panic aborts with
//! the input's path on stderr; reproduce it with `cargo fuzz run <target> <file>`.

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .expect("usage: replay <target> <file or dir>...");
    let run: fn(&[u8]) -> Result<(), outpost::bundle::BundleError> = match target.as_str() {
        "bundle_header" => outpost_fuzz::run_bundle,
        "manifest_decode" => outpost_fuzz::run_manifest,
        other => panic!("unknown target {other}"),
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for a in args {
        let p = PathBuf::from(a);
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            files.push(p);
        }
    }
    files.sort();
    for f in files {
        let data = std::fs::read(&f).unwrap();
        eprint!("{}\r", f.display());
        let verdict = match run(&data) {
            Ok(()) => "accepted".to_string(),
            Err(e) => e.to_string(),
        };
        println!(
            "{}\t{}\t{}",
            data.len(),
            verdict.replace(['\t', '\n'], " "),
            f.display()
        );
    }
}
