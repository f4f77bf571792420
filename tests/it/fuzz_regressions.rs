//! Fuzzer finds (fuzz/, scripts/fuzz.sh) replayed through the real bundle decoder: each must be a clean error.
//!
//! Every file under `fuzz/regressions/bundle_header/` is a whole bundle and every file under
//! `fuzz/regressions/manifest_decode/` is a `manifest_decode` input (`u16 LE manifest length | manifest |
//! signature list`); a new find only needs a file drop. The fixed key, clock and agent version mirror
//! `fuzz/src/lib.rs`, so a replay here takes the same path as in the fuzzer.

use outpost::bundle::{self, BundleError, Manifest, Policy, SigningKeyFile, TrustedKeys, Variant};
use outpost::inference::ModelSpec;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const TRUSTED_SEED: [u8; 32] = *b"outpost-fuzz-fixed-trusted-key-1";
const NOW_UNIX: u64 = 1_750_000_000;
const AGENT_VERSION: &str = "0.1.0";
/// Copy of the private domain tag in src/bundle/mod.rs (checked by `self_signature_matches_write_bundle`).
const DOMAIN: &[u8] = b"outpost-bundle-manifest-v1\0";

// ---- Allocation accounting, per thread (tests run in parallel) -------------------------------------------------

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(grow: usize, shrink: usize) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + grow as isize;
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        live.set(now - shrink as isize);
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size(), 0);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size(), 0);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(0, layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a moving realloc: old and new block both live at the peak.
        account(new_size, layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the most heap it held at once (bytes above what was live before).
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, (PEAK.with(Cell::get) - base).max(0) as usize)
}

// ---- The fixed fuzzing key and the two harness bodies -------------------------------------------------------

struct Fixture {
    key: SigningKeyFile,
    trusted: TrustedKeys,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.key");
        let secret = hex::encode(TRUSTED_SEED);
        std::fs::write(&path, format!("outpost-ed25519-private:{secret}\n")).unwrap();
        let key = SigningKeyFile::load(&path).unwrap();
        let trusted = TrustedKeys::parse(&key.trusted_line("fuzz")).unwrap();
        Fixture { key, trusted }
    })
}

fn policy(f: &Fixture) -> Policy<'_> {
    Policy {
        keys: &f.trusted,
        threshold: 1,
        time: outpost::clock::Reading::clock_only(NOW_UNIX),
        agent_version: AGENT_VERSION,
        trust_version: None,
    }
}

/// The `bundle_header` target: header, every variant, nothing after.
fn run_bundle(data: &[u8]) -> Result<(), BundleError> {
    let mut r = data;
    let header = bundle::read_header(&mut r, &policy(fixture()))?;
    for v in &header.manifest.variants {
        bundle::copy_variant(&mut r, &mut std::io::sink(), v)?;
    }
    bundle::expect_end(&mut r)
}

fn frame(manifest: &[u8], sigs: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(bundle::MAGIC);
    out.push(bundle::FORMAT_V1);
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&(sigs.len() as u32).to_le_bytes());
    out.extend_from_slice(sigs);
    out
}

fn split_manifest_input(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize;
    data[2..].split_at(n.min(data.len() - 2))
}

/// The `manifest_decode` target: the sections as read (never accepted unsigned), then self-signed by the trusted
/// key so the checks behind the signature run too. Returns both results.
fn run_manifest(
    data: &[u8],
) -> (
    Result<(), BundleError>,
    Option<Result<Manifest, BundleError>>,
) {
    let f = fixture();
    let (m, s) = split_manifest_input(data);
    let unsigned = run_bundle(&frame(m, s));
    let signed = match bundle::read_header_unverified(&mut &frame(m, s)[..]) {
        Err(_) => None,
        Ok((manifest, format, bytes, mut sigs)) => {
            sigs.push(f.key.sign(&[DOMAIN, &bytes].concat()));
            Some(
                bundle::verify_manifest(manifest, format, bytes, &sigs, &policy(f))
                    .map(|h| h.manifest),
            )
        }
    };
    (unsigned, signed)
}

// ---- File-drop replays ------------------------------------------------------------------------------------

fn regressions(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

/// Runs `f` on `input` on a thread of its own, so a panic names the file instead of aborting the replay.
fn no_panic<T: Send + 'static>(name: &str, input: Vec<u8>, f: fn(&[u8]) -> T) -> T {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || f(&input))
        .unwrap()
        .join()
        .unwrap_or_else(|_| panic!("{name}: the decoder panicked"))
}

#[test]
fn every_bundle_header_regression_is_a_clean_error() {
    let files = regressions("bundle_header");
    assert!(!files.is_empty());
    for path in files {
        let name = path.display().to_string();
        let input = std::fs::read(&path).unwrap();
        let (result, peak) = no_panic(&name, input, |d| peak_heap(|| run_bundle(d)));
        let err = result.err().unwrap_or_else(|| panic!("{name}: accepted"));
        assert!(!matches!(err, BundleError::Io(_)), "{name}: {err}");
        // The largest allocation the format allows is one capped section (plus the 64 KiB copy buffer).
        assert!(
            peak <= bundle::MAX_MANIFEST + (1 << 20),
            "{name}: held {peak} bytes"
        );
    }
}

#[test]
fn every_manifest_decode_regression_is_a_clean_error() {
    let files = regressions("manifest_decode");
    assert!(!files.is_empty());
    for path in files {
        let name = path.display().to_string();
        let input = std::fs::read(&path).unwrap();
        let (unsigned, signed) = no_panic(&name, input, run_manifest);
        let err = unsigned
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted unsigned"));
        assert!(!matches!(err, BundleError::Io(_)), "{name}: {err}");
        if let Some(Ok(m)) = signed {
            // Only a manifest that passes every structural check may verify once signed.
            assert!(
                (1..=bundle::MAX_VARIANTS).contains(&m.variants.len()),
                "{name}"
            );
            assert!(m.total_model_bytes() <= bundle::MAX_MODEL_BYTES, "{name}");
        }
    }
}

// ---- Notable inputs, built here ---------------------------------------------------------------------------

fn spec() -> ModelSpec {
    let json = r#"{"name":"t","input":{"name":"input","shape":[1,1,2,2],"layout":"NCHW"},
        "output":{"name":"logits","kind":"logits"},
        "preprocess":{"color":"gray","width":2,"height":2,"scale":255.0,"mean":[0.5],"std":[0.25]},
        "labels":["a","b"]}"#;
    let spec: ModelSpec = serde_json::from_str(json).unwrap();
    spec.validate().unwrap();
    spec
}

fn manifest(models: &[&[u8]]) -> Manifest {
    Manifest {
        name: "edge".into(),
        version: 2,
        created_unix: NOW_UNIX - 60,
        expires_unix: NOW_UNIX + 3600,
        min_agent_version: "0.1.0".into(),
        spec: spec(),
        hardness_threshold: None,
        golden_inputs: vec![],
        golden_tolerance: 0.05,
        variants: models
            .iter()
            .enumerate()
            .map(|(i, m)| Variant {
                name: format!("v{i}"),
                size: m.len() as u64,
                sha256: bundle::sha256(m),
                golden_outputs: vec![],
                golden_tensor_outputs: vec![],
                form: bundle::VariantForm::Onnx,
            })
            .collect(),
        golden_tensors: vec![],
        budget: None,
        baseline: None,
    }
}

fn signed_bundle() -> Vec<u8> {
    let models: [&[u8]; 2] = [b"first model bytes", b"second"];
    let mut out = Vec::new();
    let owned: Vec<Vec<u8>> = models.iter().map(|m| m.to_vec()).collect();
    bundle::write_bundle(&mut out, &manifest(&models), &owned, &[&fixture().key]).unwrap();
    out
}

#[test]
fn self_signature_matches_write_bundle() {
    let b = signed_bundle();
    run_bundle(&b).unwrap();
    let (_, _, bytes, sigs) = bundle::read_header_unverified(&mut &b[..]).unwrap();
    assert_eq!(sigs, vec![fixture().key.sign(&[DOMAIN, &bytes].concat())]);
}

#[test]
fn section_lengths_past_the_caps_are_refused_before_any_allocation() {
    let header = |len: u32| [&bundle::MAGIC[..], &[bundle::FORMAT_V1], &len.to_le_bytes()].concat();
    for len in [u32::MAX, bundle::MAX_MANIFEST as u32 + 1] {
        let (r, peak) = peak_heap(|| run_bundle(&header(len)));
        assert!(
            matches!(r, Err(BundleError::TooLarge { what: "manifest", size, .. }) if size == len as u64),
            "{r:?}"
        );
        assert!(peak < 4096, "{peak} bytes for a refused length");
    }
    let sigs = [
        &frame(b"", b"")[..13],
        &(bundle::MAX_SIGNATURES as u32 + 1).to_le_bytes(),
    ]
    .concat();
    let (r, peak) = peak_heap(|| run_bundle(&sigs));
    assert!(
        matches!(
            r,
            Err(BundleError::TooLarge {
                what: "signatures",
                ..
            })
        ),
        "{r:?}"
    );
    assert!(peak < 4096, "{peak} bytes for a refused length");
}

#[test]
fn a_length_at_the_cap_with_nothing_behind_it_is_truncated() {
    // 13 bytes cost one MAX_MANIFEST buffer (by design: the cap bounds it), and nothing more.
    let input = [
        &bundle::MAGIC[..],
        &[bundle::FORMAT_V1],
        &(bundle::MAX_MANIFEST as u32).to_le_bytes(),
    ]
    .concat();
    let (r, peak) = peak_heap(|| run_bundle(&input));
    assert!(matches!(r, Err(BundleError::Truncated(_))), "{r:?}");
    assert!(peak <= bundle::MAX_MANIFEST + 4096, "{peak}");
    assert!(matches!(
        run_bundle(&input[..8]),
        Err(BundleError::NotABundle)
    ));
}

#[test]
fn tampering_with_a_signed_bundle_is_a_clean_error_at_every_stage() {
    let b = signed_bundle();
    let (m, s) = {
        let (m, _, bytes, sigs) = bundle::read_header_unverified(&mut &b[..]).unwrap();
        (m, (bytes.len(), postcard::to_stdvec(&sigs).unwrap().len()))
    };
    let header_len = 9 + 4 + s.0 + 4 + s.1;
    assert_eq!(b.len() as u64, header_len as u64 + m.total_model_bytes());

    // A flipped manifest byte: no trusted signature left (or no longer decodes).
    let mut x = b.clone();
    x[13] ^= 1;
    assert!(matches!(
        run_bundle(&x),
        Err(BundleError::TooFewSignatures { .. } | BundleError::Manifest(_))
    ));
    // A flipped signature byte.
    let mut x = b.clone();
    x[header_len - 1] ^= 0x80;
    assert!(matches!(
        run_bundle(&x),
        Err(BundleError::TooFewSignatures { .. })
    ));
    // A flipped model byte, in each variant.
    for at in [header_len, b.len() - 1] {
        let mut x = b.clone();
        x[at] ^= 1;
        assert!(
            matches!(run_bundle(&x), Err(BundleError::Variant { .. })),
            "at {at}"
        );
    }
    // Truncated anywhere in the model data, or one byte too many.
    for cut in [header_len, header_len + 1, b.len() - 1] {
        assert!(
            matches!(run_bundle(&b[..cut]), Err(BundleError::Truncated(_))),
            "cut at {cut}"
        );
    }
    let mut x = b.clone();
    x.push(0);
    assert!(matches!(run_bundle(&x), Err(BundleError::Variant { .. })));
    // Truncated inside the header.
    for cut in 0..header_len {
        assert!(run_bundle(&b[..cut]).is_err(), "cut at {cut}");
    }
}

/// An unsigned manifest whose `golden_inputs` is `n` empty vectors: one input byte each, one 24-byte `Vec` each
/// once decoded.
fn empty_vectors_manifest(n: usize) -> Vec<u8> {
    // Format 1, as the frame says (a classifier's manifest).
    let m = manifest(&[b"x"]).as_v1().unwrap();
    let head = postcard::to_stdvec(&(
        &m.name,
        m.version,
        m.created_unix,
        m.expires_unix,
        &m.min_agent_version,
        &m.spec,
        m.hardness_threshold,
    ))
    .unwrap();
    let tail = postcard::to_stdvec(&(m.golden_tolerance, &m.variants)).unwrap();
    let mut len = postcard::to_stdvec(&(n as u64)).unwrap(); // a varint, as a Vec length is
    let mut out = head;
    out.append(&mut len);
    out.resize(out.len() + n, 0);
    out.extend_from_slice(&tail);
    out
}

fn empty_vectors_bundle() -> Vec<u8> {
    // As many empty vectors as fit under MAX_MANIFEST.
    let n = bundle::MAX_MANIFEST - empty_vectors_manifest(0).len() - 4;
    let m = empty_vectors_manifest(n);
    assert!(m.len() <= bundle::MAX_MANIFEST);
    let decoded: bundle::ManifestV1 = postcard::from_bytes(&m).unwrap();
    assert_eq!(decoded.golden_inputs.len(), n);
    drop(decoded);
    frame(
        &m,
        &postcard::to_stdvec(&Vec::<bundle::BundleSignature>::new()).unwrap(),
    )
}

/// Found by review, confirmed with the `bundle_header` binary under `-malloc_limit_mb`: the manifest is decoded
/// before any signature is checked, and postcard turns each input byte of an empty `Vec<f32>` into a 24-byte `Vec`,
/// so an unsigned 8 MiB manifest makes the decoder hold ~25-50x its size (RSS ~220 MiB) before it is rejected.
/// Still a clean error; this pins today's bound so it cannot silently get worse.
#[test]
fn an_unsigned_manifest_of_empty_vectors_is_refused_with_bounded_memory() {
    let b = empty_vectors_bundle();
    let (r, peak) = peak_heap(|| run_bundle(&b));
    assert!(
        matches!(r, Err(BundleError::TooFewSignatures { valid: 0, .. })),
        "{r:?}"
    );
    eprintln!(
        "unsigned {} byte manifest held {} MiB while decoding",
        b.len(),
        peak >> 20
    );
    // 391 MiB with rustc 1.95 / serde 1.0.229 (a moving realloc counted at old + new size; glibc RSS ~220 MiB).
    assert!(peak <= 56 * bundle::MAX_MANIFEST, "{peak}");
}

/// What the caps promise: an unsigned bundle never makes the device hold much more than one capped section, because
/// signatures are checked over the raw manifest bytes before the manifest is decoded (fuzzing finding 2, fixed).
#[test]
fn an_unsigned_manifest_costs_at_most_its_cap() {
    let b = empty_vectors_bundle();
    let (r, peak) = peak_heap(|| run_bundle(&b));
    assert!(r.is_err());
    assert!(peak <= 3 * bundle::MAX_MANIFEST, "{peak}");
}

/// Fuzzing finding 1, fixed: variant sizes whose sum overflows u64 panicked with overflow checks on, and wrapped
/// past `MAX_MODEL_BYTES` without them (only reachable with a trusted signature). The sum now saturates.
#[test]
fn variant_sizes_whose_sum_overflows_are_too_large() {
    let found = regressions("manifest_decode")
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("variant-sizes-overflow"))
        .collect::<Vec<_>>();
    assert!(
        !found.is_empty(),
        "the overflow input is kept in fuzz/regressions/manifest_decode/"
    );
    for path in found {
        let name = path.display().to_string();
        let input = std::fs::read(&path).unwrap();
        let (unsigned, signed) = no_panic(&name, input, run_manifest);
        assert!(unsigned.is_err(), "{name}");
        assert!(
            matches!(
                signed,
                Some(Err(BundleError::TooLarge {
                    what: "model data",
                    ..
                }))
            ),
            "{name}: {signed:?}"
        );
    }
    // The same through `read_header`, signed by the trusted key as an operator would.
    let mut m = manifest(&[b"a", b"b"]);
    for v in &mut m.variants {
        v.size = 1 << 63;
    }
    let mut b = Vec::new();
    bundle::write_bundle(&mut b, &m, &[], &[&fixture().key]).unwrap();
    let r = no_panic("signed overflow bundle", b, run_bundle);
    assert!(
        matches!(
            r,
            Err(BundleError::TooLarge {
                what: "model data",
                ..
            })
        ),
        "{r:?}"
    );
}
