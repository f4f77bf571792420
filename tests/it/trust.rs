//! The device's trust document through the real `outpost` binary: rotations applied by hand, every refused document
//! leaving the stored trust byte for byte as it was, SIGKILL during applications, and the console reset.

use crate::common;

use crate::common::{outpost, s, sign_trust, stored_trust, with_role, Fixture};
use outpost::bundle::SigningKeyFile;
use outpost::trust::stored::TRUST_FILE;
use outpost::trust::{TrustDocument, TrustKey};
use std::path::{Path, PathBuf};

fn key() -> SigningKeyFile {
    SigningKeyFile::generate().unwrap()
}

fn apply(cfg: &Path, files: &[&Path]) -> std::process::Output {
    let mut args = vec!["trust", "apply", "-c", s(cfg)];
    args.extend(files.iter().map(|p| s(p)));
    outpost(&args)
}

fn stored(state: &Path) -> Vec<u8> {
    std::fs::read(state.join(TRUST_FILE)).unwrap()
}

fn show(cfg: &Path) -> outpost::wire::status::TrustStatus {
    let o = outpost(&["trust", "show", "-c", s(cfg)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn entry(k: &SigningKeyFile) -> TrustKey {
    TrustKey {
        id: k.id(),
        kind: "ed25519".into(),
        public: hex::decode(k.public_hex()).unwrap(),
    }
}

/// The device at version 2, whose root moved to two offline keys at a threshold of two (the first rotation README
/// asks for); returns the root keys and version 2.
fn at_version_2(
    f: &Fixture,
    cfg: &Path,
    state: &Path,
) -> (SigningKeyFile, SigningKeyFile, TrustDocument) {
    // Before its first trust the device shows the version 1 its key files make (root: key 1 and key 2 at threshold
    // 1, flagged), without storing it; the first application stores it under version 2.
    let st = show(cfg);
    assert_eq!(st.version, Some(1));
    assert!(!state.join(TRUST_FILE).exists());
    assert!(
        st.warnings
            .contains(&outpost::wire::status::TrustWarning::SingleRootKey),
        "a one-key root is flagged: {st:?}"
    );
    let v1 = f.trust_v1();
    let (r1, r2) = (key(), key());
    let k1 = SigningKeyFile::load(&f.key1).unwrap();
    let mut v2 = with_role(&v1, "root", &[&r1, &r2], 2);
    v2.version = 2;
    let p = f.path("v2.trust");
    sign_trust(&v2, &[&k1, &r1, &r2], &p);
    let o = apply(cfg, &[&p]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = show(cfg);
    assert_eq!(st.version, Some(2));
    assert!(st.warnings.is_empty(), "an offline two-key root: {st:?}");
    (r1, r2, v2)
}

#[test]
fn refused_documents_leave_the_trust_byte_for_byte_as_it_was() {
    let f = Fixture::new();
    let state = f.path("state");
    let cfg = f.trust_config(&state);
    let v1_bytes = outpost::trust::stored::unsigned(&f.trust_v1());
    let (r1, r2, v2) = at_version_2(&f, &cfg, &state);
    let before = stored(&state);
    let (a, b) = (key(), key());
    let next = |d: &TrustDocument| {
        let mut d = d.clone();
        d.version = 3;
        d
    };
    let v3 = next(&v2);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "below the root threshold",
            outpost::trust::chain::sign(&v3, &[&r1]),
            "1 valid signature(s) from distinct root keys of version 2, 2 required",
        ),
        (
            "one leaked key of a two-key root and the attacker's own",
            outpost::trust::chain::sign(&next(&with_role(&v2, "root", &[&a], 1)), &[&r1, &a]),
            "of version 2, 2 required",
        ),
        (
            "a new root set that did not sign its own document",
            outpost::trust::chain::sign(&next(&with_role(&v2, "root", &[&b], 1)), &[&r1, &r2]),
            "0 valid signature(s) from distinct root keys of version 3",
        ),
        (
            "one key's signature counted twice",
            outpost::trust::chain::sign(&v3, &[&r1, &r1]),
            "1 valid signature(s)",
        ),
        ("a replayed older version", v1_bytes, "replay"),
        (
            "a version that skips one",
            outpost::trust::chain::sign(
                &{
                    let mut d = v2.clone();
                    d.version = 4;
                    d
                },
                &[&r1, &r2],
            ),
            "skips versions",
        ),
    ];
    // Malformed documents, each signed by the whole root so that only its form is wrong.
    let signed = |d: TrustDocument| outpost::trust::chain::sign(&d, &[&r1, &r2]);
    let mut dup = v3.clone();
    dup.keys.push(dup.keys[0].clone());
    cases.push(("a key listed twice", signed(dup), "listed twice"));
    let mut stranger = v3.clone();
    stranger.roles[2].1.keys.push(a.id());
    cases.push((
        "a role naming an unlisted key",
        signed(stranger),
        "does not list",
    ));
    let mut kind = v3.clone();
    let mut e = entry(&a);
    e.kind = "rsa-pss".into();
    kind.keys.push(e);
    cases.push(("an unknown key type", signed(kind), "does not know"));
    let mut zero = v3.clone();
    zero.roles[2].1.threshold = 0;
    cases.push(("a threshold of zero", signed(zero), "threshold of 0"));
    let mut above = v3.clone();
    above.roles[2].1.threshold = 9;
    cases.push((
        "a threshold above the keys",
        signed(above),
        "nothing could ever satisfy",
    ));
    let mut empty = v3.clone();
    empty.roles[2].1.keys.clear();
    cases.push(("a role with no keys", signed(empty), "lists no keys"));
    let good = signed(v3.clone());
    cases.push((
        "truncated",
        good[..good.len() - 10].to_vec(),
        "does not decode",
    ));
    cases.push((
        "garbage",
        b"not a trust document".to_vec(),
        "does not decode",
    ));
    cases.push(("oversized", vec![0u8; 64 * 1024 + 1], "more than the cap"));
    for (what, bytes, cause) in cases {
        let p = f.path("case.trust");
        std::fs::write(&p, &bytes).unwrap();
        let o = apply(&cfg, &[&p]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: taken!");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(err.contains(cause), "{what}: expected {cause:?} in {err}");
        assert_eq!(stored(&state), before, "{what}: the stored trust changed");
    }
    // An unknown role (a newer agent's) grants nothing here and does not stop the document.
    let mut newer = v3.clone();
    newer.roles.push((
        "telemetry".into(),
        outpost::trust::RoleKeys {
            keys: vec![r1.id()],
            threshold: 1,
        },
    ));
    let p = f.path("v3.trust");
    let bytes = sign_trust(&newer, &[&r1, &r2], &p);
    let o = apply(&cfg, &[&p]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stored(&state), bytes);
    // The same again changes nothing and is not an error.
    let o = apply(&cfg, &[&p]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("unchanged at version 3"));
}

#[test]
fn a_device_behind_walks_the_chain_given_in_any_order() {
    let f = Fixture::new();
    let state = f.path("state");
    let cfg = f.trust_config(&state);
    let (r1, r2, v2) = at_version_2(&f, &cfg, &state);
    let mut docs = Vec::new();
    let mut d = v2;
    for v in 3..=5 {
        d.version = v;
        d.issued_unix = 1_796_601_600 + v;
        let p = f.path(&format!("v{v}.trust"));
        sign_trust(&d, &[&r1, &r2], &p);
        docs.push(p);
    }
    docs.reverse();
    let refs: Vec<&Path> = docs.iter().map(|p| p.as_path()).collect();
    let o = apply(&cfg, &refs);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 -> 5"));
    assert_eq!(stored_trust(&state).version, 5);
}

/// SIGKILL at random instants of 200 applications: the stored trust is always exactly version N or N+1.
#[test]
fn sigkill_during_applications_leaves_version_n_or_n_plus_1() {
    use rand::Rng;
    let iterations = common::kill_iterations();
    let f = Fixture::new();
    let state = f.path("state");
    let cfg = f.trust_config(&state);
    let (r1, r2, v2) = at_version_2(&f, &cfg, &state);
    let mut rng = rand::rng();
    let (mut killed, mut mid_write) = (0, 0);
    let mut timer = common::KillTimer::new(std::time::Duration::from_millis(5));
    let mut current = stored(&state);
    let mut doc = v2;
    let p = f.path("next.trust");
    // At least `iterations`, and on until 20 kills landed inside the write (it is a small part of an application).
    let mut i = 0;
    while i < iterations || (mid_write < 20 && i < iterations * 5) {
        i += 1;
        let mut next = doc.clone();
        next.version = doc.version + 1;
        let next_bytes = sign_trust(&next, &[&r1, &r2], &p);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["trust", "apply", "-c", s(&cfg), s(&p)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Half the kills aim at the last third, where the write is (the process start dominates the rest).
        let at = if i.is_multiple_of(2) {
            rng.random_range(0.0..1.2)
        } else {
            rng.random_range(0.6..1.1)
        };
        if timer.run(&mut child, i, at) {
            killed += 1;
        }
        // A temp file left behind: the kill landed between the write's start and its rename.
        let temps: Vec<PathBuf> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
            })
            .collect();
        if !temps.is_empty() {
            mid_write += 1;
            for t in temps {
                std::fs::remove_file(t).unwrap();
            }
        }
        let now = stored(&state);
        assert!(
            now == current || now == next_bytes,
            "iteration {i}: the stored trust is neither version {} nor {}",
            doc.version,
            next.version
        );
        if now == next_bytes {
            current = now;
            doc = next;
        }
    }
    eprintln!(
        "{i} applications: {killed} killed before they ended, {mid_write} inside the write (a temp file \
         left), trust went 2 -> {}",
        doc.version
    );
    assert!(
        killed >= 20,
        "too few kills landed mid-application ({killed})"
    );
    assert!(
        mid_write >= 20,
        "too few kills landed inside the write ({mid_write})"
    );
    assert!(doc.version > 2, "no application ever completed");
}

#[test]
fn a_lost_root_is_restored_from_the_console_and_a_missing_file_is_an_error() {
    let f = Fixture::new();
    let state = f.path("state");
    let cfg = f.trust_config(&state);
    let (_lost1, _lost2, v2) = at_version_2(&f, &cfg, &state);
    // The trust file goes: the device refuses signed bundles with the real cause, it does not go back to the key
    // files (whose keys the rotation may have revoked).
    std::fs::remove_file(state.join(TRUST_FILE)).unwrap();
    let bundle = f.bundle("v5.bundle", "edge-fp32", 5, &[&f.key1], &[]);
    let o = f.install(&state, &bundle, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("is gone") && err.contains("outpost trust reset"),
        "{err}"
    );
    let st = show(&cfg);
    assert_eq!(st.version, None);
    assert!(st.error.unwrap().contains("is gone"));
    // Both root keys of version 2 are lost: a new root from the device's console. A document its own root did not
    // sign is refused.
    let (n1, n2) = (key(), key());
    let k1 = SigningKeyFile::load(&f.key1).unwrap();
    let mut fresh = with_role(&v2, "root", &[&n1, &n2], 2);
    fresh.version = 3;
    let p = f.path("reset.trust");
    sign_trust(&fresh, &[&n1], &p);
    let o = outpost(&["trust", "reset", "-c", s(&cfg), s(&p)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 required"));
    let bytes = sign_trust(&fresh, &[&n1, &n2], &p);
    let o = outpost(&["trust", "reset", "-c", s(&cfg), s(&p)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stored(&state), bytes);
    let st = show(&cfg);
    assert_eq!(st.version, Some(3));
    let reset = st.reset.expect("the reset is shown");
    assert_eq!((reset.from_version, reset.to_version), (None, 3));
    // Bundles install again (key 1 stays in the bundles role), and the next rotation is signed by the new root.
    let o = f.install(&state, &bundle, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut v4 = with_role(&fresh, "bundles", &[&k1], 1);
    v4.version = 4;
    let p = f.path("v4.trust");
    sign_trust(&v4, &[&n1, &n2], &p);
    let o = apply(&cfg, &[&p]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(show(&cfg).version, Some(4));
}

/// A bundle signed only by a key a rotation removed is refused; `outpostctl resign` adds a current key's signature
/// without changing a byte of its manifest, and it installs.
#[test]
fn a_bundle_resigned_with_a_current_key_installs_with_its_manifest_unchanged() {
    let f = Fixture::new();
    let state = f.path("state");
    let cfg = f.trust_config(&state);
    let k1 = SigningKeyFile::load(&f.key1).unwrap();
    let mut v2 = with_role(&f.trust_v1(), "bundles", &[&k1], 1);
    v2.version = 2;
    let p = f.path("v2.trust");
    sign_trust(&v2, &[&k1], &p);
    let o = apply(&cfg, &[&p]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let old = f.bundle("old.bundle", "edge-fp32", 5, &[&f.key2], &[]);
    let o = f.install(&state, &old, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("key no longer trusted"),
        "{err}"
    );
    let resigned = f.path("resigned.bundle");
    let o = common::outpostctl(&[
        "resign",
        "--key",
        s(&f.key1),
        "--out",
        s(&resigned),
        s(&old),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The manifest as `inspect` shows it, and apart from it the keys that signed.
    let inspect = |b: &Path| {
        let out = common::outpostctl(&["inspect", "--json", s(b)]).stdout;
        let mut v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let signers = v["signatures"].take();
        (v, signers)
    };
    let ((before, signed_before), (after, signed_after)) = (inspect(&old), inspect(&resigned));
    assert_eq!(before, after, "the manifest is unchanged");
    let id2 = SigningKeyFile::load(&f.key2).unwrap().id();
    assert_eq!(signed_before, serde_json::json!([id2]));
    assert_eq!(signed_after, serde_json::json!([id2, k1.id()]));
    let o = f.install(&state, &resigned, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
