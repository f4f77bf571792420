//! Writes the seed corpora: `gen_seeds <dir>` creates `<dir>/bundle_header/seed-*.bin` (bundles made by
//! `write_bundle` with the fixed keys) and `<dir>/manifest_decode/seed-*.bin` (their two postcard sections in the
//! `manifest_decode` input format). Deterministic: the same files every run.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: gen_seeds <corpus dir>"),
    );
    let (bh, md) = (dir.join("bundle_header"), dir.join("manifest_decode"));
    std::fs::create_dir_all(&bh).unwrap();
    std::fs::create_dir_all(&md).unwrap();
    for (name, b) in outpost_fuzz::seed_bundles() {
        // Every seed replays cleanly through both harnesses (some are rejected by design, none panic).
        let accepted = outpost_fuzz::run_bundle(&b);
        let (m, s) = outpost_fuzz::sections(&b).expect("seed is framed");
        let input = outpost_fuzz::manifest_input(m, s);
        let signed = outpost_fuzz::run_manifest(&input);
        std::fs::write(bh.join(format!("seed-{name}.bin")), &b).unwrap();
        std::fs::write(md.join(format!("seed-{name}.bin")), &input).unwrap();
        println!(
            "{name}: {} bytes, bundle_header {}, manifest_decode {}",
            b.len(),
            verdict(&accepted),
            verdict(&signed)
        );
    }
    command_seeds(&dir);
}

/// Signed commands of every action for `command_decode`.
fn command_seeds(dir: &std::path::Path) {
    use outpost::wire::command::{sign, Action, CommandBody, Offer, Target};
    let cd = dir.join("command_decode");
    std::fs::create_dir_all(&cd).unwrap();
    let f = outpost_fuzz::fixture();
    let offer = Offer {
        bundle: [7; 32],
        size: 5000,
        chunk_size: 1024,
        header_len: 300,
        chunks: vec![[1; 32]; 5],
        name: "edge".into(),
        version: 2,
    };
    let actions = [
        ("status", Action::Status, Target::Device("d1".into())),
        ("rollback", Action::Rollback, Target::Group("g1".into())),
        ("promote", Action::Promote, Target::Device("d1".into())),
        ("set", Action::Set { key: "hardness.threshold".into(), value: "0.8".into() }, Target::Device("d1".into())),
        ("purge", Action::PurgeCache, Target::Device("d2".into())),
        ("update", Action::Update(offer), Target::Device("d1".into())),
    ];
    for (i, (name, action, target)) in actions.into_iter().enumerate() {
        let body = CommandBody {
            target,
            seq: 101 + i as u64,
            issued_unix: outpost_fuzz::NOW_UNIX,
            expires_unix: outpost_fuzz::NOW_UNIX + 60,
            action,
            model: None,
        };
        let bytes = sign(&body, &[&f.key]);
        println!("command {name}: {} bytes, {:?}", bytes.len(), outpost_fuzz::run_command(&bytes).err());
        std::fs::write(cd.join(format!("seed-{name}.bin")), bytes).unwrap();
    }
}

fn verdict(r: &Result<(), outpost::bundle::BundleError>) -> String {
    match r {
        Ok(()) => "accepted".into(),
        Err(e) => format!("rejected ({e})"),
    }
}
