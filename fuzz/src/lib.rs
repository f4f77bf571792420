//! Shared pieces of the bundle fuzz targets: a fixed trusted key, the device policy they run under, the two
//! harness bodies and the seed bundles.
//!
//! Everything is deterministic (fixed key seeds, fixed clock), so a crash file replays the same way in
//! `tests/it/fuzz_regressions.rs`, which mirrors the constants below.

use outpost::bundle::{
    self, BundleError, BundleSignature, Manifest, Policy, SigningKeyFile, TrustedKeys, Variant,
};
use outpost::inference::spec::{
    Accuracy, Color, InputSpec, Layout, OutputKind, OutputSpec, Preprocess,
};
use outpost::inference::ModelSpec;
use std::sync::OnceLock;

/// Secret of the one key the fuzzed device trusts.
pub const TRUSTED_SEED: [u8; 32] = *b"outpost-fuzz-fixed-trusted-key-1";
/// Secret of a key the device does not trust (second signer on some seeds).
pub const OTHER_SEED: [u8; 32] = *b"outpost-fuzz-untrusted-other-key";
/// The device clock and version during fuzzing.
pub const NOW_UNIX: u64 = 1_750_000_000;
pub const AGENT_VERSION: &str = "0.1.0";
/// Copy of the private domain tag in `src/bundle/mod.rs`; `fixture()` checks it still matches.
pub const DOMAIN: &[u8] = b"outpost-bundle-manifest-v1\0";

/// Builds a `SigningKeyFile` from a fixed secret (the public API only loads keys from files).
pub fn key_from_seed(seed: &[u8; 32]) -> SigningKeyFile {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "outpost-fuzz-{}-{}.key",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, format!("outpost-ed25519-private:{hex}\n")).expect("write temp key");
    let key = SigningKeyFile::load(&path).expect("load temp key");
    let _ = std::fs::remove_file(&path);
    key
}

pub struct Fixture {
    pub key: SigningKeyFile,
    pub other: SigningKeyFile,
    pub trusted: TrustedKeys,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = key_from_seed(&TRUSTED_SEED);
        let other = key_from_seed(&OTHER_SEED);
        let trusted = TrustedKeys::parse(&key.trusted_line("fuzz")).expect("trusted line");
        // Self-signing in `manifest_decode` must produce exactly what `write_bundle` produces.
        let b = &seed_bundles_with(&key, &other)[0].1;
        let (m, s) = sections(b).expect("seed has both sections");
        let sigs: Vec<BundleSignature> = postcard::from_bytes(s).expect("seed sigs decode");
        assert_eq!(
            sigs[0],
            key.sign(&[DOMAIN, m].concat()),
            "DOMAIN is out of date"
        );
        Fixture {
            key,
            other,
            trusted,
        }
    })
}

pub fn policy(f: &Fixture) -> Policy<'_> {
    Policy {
        keys: &f.trusted,
        threshold: 1,
        time: outpost::clock::Reading::clock_only(NOW_UNIX),
        agent_version: AGENT_VERSION,
    }
}

/// `OUTPOSTB | 1 | len | manifest | len | sigs`, the header framing of `write_bundle` for a format 1 (classifier)
/// manifest, the format the corpus was grown on.
pub fn frame(manifest: &[u8], sigs: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + manifest.len() + sigs.len());
    out.extend_from_slice(bundle::MAGIC);
    out.push(bundle::FORMAT_V1);
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&(sigs.len() as u32).to_le_bytes());
    out.extend_from_slice(sigs);
    out
}

/// The manifest and signature sections of a well-framed bundle.
pub fn sections(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let b = b
        .strip_prefix(bundle::MAGIC.as_slice())?
        .strip_prefix(&[bundle::FORMAT_V1])?;
    let (m, rest) = take_section(b)?;
    let (s, _) = take_section(rest)?;
    Some((m, s))
}

fn take_section(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let rest = &b[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The `manifest_decode` input format: `u16 LE manifest length | manifest | signature list` (a short length is
/// clamped, so every input is usable).
pub fn split_manifest_input(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize;
    data[2..].split_at(n.min(data.len() - 2))
}

pub fn manifest_input(manifest: &[u8], sigs: &[u8]) -> Vec<u8> {
    let n = u16::try_from(manifest.len()).expect("seed manifest under 64 KiB");
    [&n.to_le_bytes()[..], manifest, sigs].concat()
}

/// What a device does with an untrusted bundle: header, every variant, nothing after.
pub fn run_bundle(data: &[u8]) -> Result<(), BundleError> {
    let f = fixture();
    let mut r = data;
    let header = bundle::read_header(&mut r, &policy(f))?;
    // Only the fixed key is trusted, and a header only verifies with its signature.
    assert_eq!(header.signers, vec![f.key.id()]);
    let m = &header.manifest;
    assert!((1..=bundle::MAX_VARIANTS).contains(&m.variants.len()));
    assert!(m.total_model_bytes() <= bundle::MAX_MODEL_BYTES);
    assert!(m.expires_unix > NOW_UNIX);
    let header_len = data.len() - r.len();
    for v in &m.variants {
        bundle::copy_variant(&mut r, &mut std::io::sink(), v)?;
    }
    bundle::expect_end(&mut r)?;
    // Accepted: the bundle is exactly the signed header plus the signed model bytes.
    assert!(r.is_empty());
    assert_eq!(data.len() as u64, header_len as u64 + m.total_model_bytes());
    Ok(())
}

/// Decodes both postcard sections through the real reader; when the manifest decodes, signs its exact bytes with
/// the trusted key (as an operator would) so the structural and policy checks behind the signature are reached too.
pub fn run_manifest(data: &[u8]) -> Result<(), BundleError> {
    let f = fixture();
    let (m_bytes, s_bytes) = split_manifest_input(data);
    let framed = frame(m_bytes, s_bytes);
    let mut r = &framed[..];
    let (manifest, format, manifest_bytes, mut sigs) = bundle::read_header_unverified(&mut r)?;
    assert!(r.is_empty());
    assert_eq!(manifest_bytes, m_bytes);
    // Encoding is stable: what we re-encode decodes and re-encodes to the same bytes.
    let again = postcard::to_stdvec(&manifest).expect("a decoded manifest encodes");
    let back: Manifest = postcard::from_bytes(&again).expect("re-encoded manifest decodes");
    assert_eq!(postcard::to_stdvec(&back).unwrap(), again);
    // Unsigned (as read): never accepted, whatever the signature list says, unless it holds a real signature.
    let unsigned =
        bundle::verify_manifest(manifest.clone(), format, manifest_bytes.clone(), &sigs, &policy(f));
    if let Ok(h) = &unsigned {
        assert_eq!(h.signers, vec![f.key.id()]);
    }
    sigs.push(f.key.sign(&[DOMAIN, &manifest_bytes].concat()));
    let h = bundle::verify_manifest(manifest, format, manifest_bytes, &sigs, &policy(f))?;
    assert_eq!(h.signers, vec![f.key.id()]);
    assert!((1..=bundle::MAX_VARIANTS).contains(&h.manifest.variants.len()));
    Ok(())
}

fn spec(gray: bool, nhwc: bool, w: u32, h: u32) -> ModelSpec {
    let c = if gray { 1 } else { 3 };
    let (wu, hu) = (w as usize, h as usize);
    let spec = ModelSpec {
        name: format!("fuzz-{w}x{h}"),
        version: 3,
        input: InputSpec {
            name: "input".into(),
            shape: if nhwc {
                vec![1, hu, wu, c]
            } else {
                vec![1, c, hu, wu]
            },
            layout: if nhwc { Layout::Nhwc } else { Layout::Nchw },
        },
        output: OutputSpec {
            name: "logits".into(),
            kind: if gray {
                OutputKind::Logits
            } else {
                OutputKind::Probabilities
            },
        },
        preprocess: Preprocess {
            color: if gray { Color::Gray } else { Color::Rgb },
            width: w,
            height: h,
            scale: 255.0,
            mean: vec![0.5; c],
            std: vec![0.25; c],
        },
        labels: vec!["0".into(), "1".into(), "2".into()],
        accuracy: gray.then(|| Accuracy {
            split: "test".into(),
            n: 100,
            top1: 0.9,
        }),
        tensors: None,
        task: None,
    };
    spec.validate().expect("seed spec is valid");
    spec
}

fn model(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn variant(name: &str, bytes: &[u8], goldens: usize, out_len: usize) -> Variant {
    Variant {
        name: name.into(),
        size: bytes.len() as u64,
        sha256: bundle::sha256(bytes),
        golden_outputs: (0..goldens)
            .map(|g| {
                (0..out_len)
                    .map(|i| (g * out_len + i) as f32 * 0.125)
                    .collect()
            })
            .collect(),
        golden_tensor_outputs: vec![],
        form: bundle::VariantForm::Onnx,
    }
}

/// A handful of small valid bundles (and a few that fail one policy check each), all signed with fixed keys.
pub fn seed_bundles() -> Vec<(&'static str, Vec<u8>)> {
    let f = fixture();
    seed_bundles_with(&f.key, &f.other)
}

fn seed_bundles_with(key: &SigningKeyFile, other: &SigningKeyFile) -> Vec<(&'static str, Vec<u8>)> {
    let base = |spec: ModelSpec, goldens: Vec<Vec<f32>>, variants: Vec<Variant>| Manifest {
        name: "edge".into(),
        version: 7,
        created_unix: NOW_UNIX - 60,
        expires_unix: NOW_UNIX + 10 * 365 * 86400,
        min_agent_version: "0.1.0".into(),
        spec,
        hardness_threshold: None,
        golden_inputs: goldens,
        golden_tolerance: 0.05,
        variants,
        golden_tensors: vec![],
        budget: None,
        baseline: None,
    };
    let mut out = Vec::new();
    let mut push =
        |name: &'static str, m: &Manifest, models: &[Vec<u8>], keys: &[&SigningKeyFile]| {
            let mut b = Vec::new();
            bundle::write_bundle(&mut b, m, models, keys).expect("write seed bundle");
            out.push((name, b));
        };

    // One variant, no golden cases.
    let m1 = model(48, 1);
    let one = base(
        spec(true, false, 4, 4),
        vec![],
        vec![variant("int8", &m1, 0, 0)],
    );
    push("one-variant", &one, std::slice::from_ref(&m1), &[key]);

    // Two variants with golden cases and a hardness threshold; also signed by an untrusted key.
    let (a, b) = (model(40, 2), model(24, 3));
    let mut two = base(
        spec(true, false, 2, 2),
        vec![vec![0.0, 0.25, 0.5, 1.0], vec![1.0, 0.5, 0.25, 0.0]],
        vec![variant("int8", &a, 2, 3), variant("fp32", &b, 2, 3)],
    );
    two.hardness_threshold = Some(0.6);
    push(
        "two-variants-two-signers",
        &two,
        &[a.clone(), b.clone()],
        &[other, key],
    );

    // RGB, NHWC, three variants, one of them empty.
    let (c, d) = (model(16, 4), model(8, 5));
    let three = base(
        spec(false, true, 1, 2),
        vec![vec![0.1; 6]],
        vec![
            variant("qdq", &c, 1, 3),
            variant("empty", &[], 1, 3),
            variant("fp32", &d, 1, 3),
        ],
    );
    push("rgb-three-variants", &three, &[c, vec![], d], &[key]);

    // Each fails one check after the signature: expired, needs a newer agent, bad shape.
    let mut expired = one.clone();
    expired.expires_unix = NOW_UNIX - 1;
    push("expired", &expired, std::slice::from_ref(&m1), &[key]);
    let mut newer = one.clone();
    newer.min_agent_version = "0.2.0-rc.1".into();
    push("agent-too-old", &newer, std::slice::from_ref(&m1), &[key]);
    let mut shape = two.clone();
    shape.variants[1].golden_outputs.pop();
    push("golden-mismatch", &shape, &[a, b], &[key]);

    // Signed only by a key the device does not trust.
    push("untrusted-signer", &one, &[m1], &[other]);
    out
}

/// The fleet command decoder, as a device runs it: arbitrary bytes through `command::verify` (the trusted key, device
/// `d1` in group `g1`, a last sequence number of 100). When the body decodes, it is also re-signed with the trusted key
/// and verified again, so the checks behind the signature (target, expiry, sequence, offer limits) get fuzzed too.
pub fn run_command(data: &[u8]) -> Result<(), outpost::wire::command::CommandError> {
    use outpost::wire::command::{self, Action, Checker};
    let f = fixture();
    let checker = Checker {
        keys: &f.trusted,
        threshold: 1,
        device: "d1",
        group: Some("g1"),
        time: outpost::clock::Reading::clock_only(NOW_UNIX),
        last_seq: 100,
    };
    let first = command::verify(data, &checker);
    if let Ok((_, body)) = command::decode(data) {
        let signed = command::sign(&body, &[&f.key]);
        if let Ok(b) = command::verify(&signed, &checker) {
            assert!(b.seq > 100 && b.expires_unix > NOW_UNIX, "accepted a replayed or expired command");
            if let Action::Update(o) = &b.action {
                let _ = o.check(512 * 1024 * 1024);
                for i in 0..o.chunks.len().min(4) {
                    let _ = o.chunk_len(i);
                }
                let _ = o.header_chunks();
            }
        }
    }
    first.map(|_| ())
}
