//! `outpost run` as a service: real process, free port, temp state dir, HTTP over loopback.

use crate::common;

use crate::common::{http, Daemon};
use outpost::inference::{DecodeLimits, Engine};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn engine() -> Engine {
    Engine::load_files(&common::models().join("edge-int8.onnx"), None).unwrap()
}

#[test]
fn serves_the_test_split_then_answers_from_the_cache_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let mut session = engine.session().unwrap();
    let images: Vec<_> = common::test_images().into_iter().step_by(5).collect(); // 300 images
    let agent = http();

    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(daemon.get_json("/v1/status")["slot"], "builtin");
    let mut first = Vec::new();
    for (path, _) in &images {
        let bytes = std::fs::read(path).unwrap();
        let (status, v) = daemon.infer(&agent, &bytes, "image/png");
        assert_eq!(status, 200, "{v}");
        let want = session
            .classify(
                &engine
                    .tensor_from_image(&bytes, &DecodeLimits::default())
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(v["label"], want.label.as_str(), "{}", path.display());
        assert_eq!(v["source"], "edge");
        assert_eq!(
            v["model"]["digest"],
            engine.digest(),
            "the built-in model is models/edge-int8.onnx"
        );
        first.push(v);
    }
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("outpost_requests_total{model=\"edge-int8\",outcome=\"edge\"} 300"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outpost_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("outpost_model_info{"), "{metrics}");
    assert!(daemon.stop().success());

    let daemon = Daemon::start(dir.path(), &[]);
    for ((path, _), before) in images.iter().zip(&first) {
        let (status, v) = daemon.infer(&agent, &std::fs::read(path).unwrap(), "image/png");
        assert_eq!(status, 200);
        assert_eq!(v["source"], "cache", "{}", path.display());
        for k in ["label", "confidence", "margin", "entropy", "model"] {
            assert_eq!(
                v[k],
                before[k],
                "{k} differs after restart for {}",
                path.display()
            );
        }
    }
    // The same pixels in another encoding hit too: the key is the decoded tensor, not the file bytes.
    let img = image::open(&images[0].0).unwrap();
    let mut reencoded = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut reencoded,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Paeth,
    )
    .write_image(
        img.as_bytes(),
        img.width(),
        img.height(),
        img.color().into(),
    )
    .unwrap();
    assert_ne!(reencoded, std::fs::read(&images[0].0).unwrap());
    let (_, v) = daemon.infer(&agent, &reencoded, "image/png");
    assert_eq!(v["source"], "cache");
    let status = daemon.get_json("/v1/status");
    assert_eq!(status["counters"]["cache_hits"], 301);
    assert!(daemon.stop().success());
}

use image::ImageEncoder;

#[test]
fn bad_input_gets_a_4xx_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let agent = http();
    let good = std::fs::read(&common::test_images()[0].0).unwrap();
    let mut bomb = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bomb)
        .write_image(
            &vec![0u8; 9000 * 9000],
            9000,
            9000,
            image::ExtendedColorType::L8,
        )
        .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        ("empty body", vec![], "image/png", 400, "empty"),
        (
            "truncated PNG",
            good[..good.len() / 2].to_vec(),
            "image/png",
            422,
            "bad_image",
        ),
        (
            "text file",
            b"just some text\n".to_vec(),
            "application/octet-stream",
            422,
            "bad_image",
        ),
        (
            "text content type",
            b"just some text\n".to_vec(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        ("decompression bomb", bomb, "image/png", 422, "bad_image"),
    ];
    for (what, body, ct, want, code) in cases {
        let (status, v) = daemon.infer(&agent, &body, ct);
        assert_eq!(status, want, "{what}: {v}");
        assert_eq!(v["code"], code, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.len() > 10),
            "{what}: the error must say what was wrong: {v}"
        );
        let (status, v) = daemon.infer(&agent, &good, "image/png");
        assert_eq!(status, 200, "after {what}: {v}");
    }
    // 50 MB: the daemon answers 413 from the Content-Length alone, without reading (or buffering) the body; a
    // client that keeps writing after that sees the connection closed, so this one reads the answer first.
    let (status, v) = raw_post_headers_only(&daemon.addr, 50 * 1024 * 1024);
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["code"], "too_large", "{v}");
    let (status, _) = daemon.infer(&agent, &good, "image/png");
    assert_eq!(status, 200);
    let status = daemon.get_json("/v1/status");
    assert_eq!(status["counters"]["bad_input"], 6, "{status}");
    assert!(daemon.stop().success());
}

/// Sends a POST whose headers announce `len` bytes plus the first 64 KiB of it, and reads the response.
fn raw_post_headers_only(addr: &str, len: usize) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/infer HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let _ = s.write_all(&vec![0u8; 64 * 1024]);
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn sigterm_under_load_finishes_or_refuses_every_request_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // One worker and a short queue so requests are in flight and queued when the signal lands.
    let daemon = Daemon::start(dir.path(), &["--workers", "1", "--queue", "4"]);
    let images: Vec<Vec<u8>> = common::test_images()
        .iter()
        .take(200)
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();
    let images = Arc::new(images);
    let (ok, busy, refused) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let url = daemon.url("/v1/infer");
    // The clients run until the daemon has stopped and refused some of them.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let (images, ok, busy, refused, url, done) = (
                images.clone(),
                ok.clone(),
                busy.clone(),
                refused.clone(),
                url.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                let agent = http();
                let mut i = t;
                let mut bad = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    match agent
                        .post(&url)
                        .header("content-type", "image/png")
                        .send(&images[i % images.len()][..])
                    {
                        Ok(mut r) => {
                            let s = r.status().as_u16();
                            let body = r.body_mut().read_to_string().unwrap_or_default();
                            match s {
                                200 if body.contains("\"label\"") => {
                                    ok.fetch_add(1, Ordering::SeqCst)
                                }
                                503 => busy.fetch_add(1, Ordering::SeqCst),
                                _ => {
                                    bad.push(format!("{s} {body}"));
                                    0
                                }
                            };
                        }
                        Err(ureq::Error::Io(e))
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::ConnectionRefused
                                    | std::io::ErrorKind::ConnectionReset
                            ) =>
                        {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(ureq::Error::ConnectionFailed) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => bad.push(e.to_string()),
                    }
                    i += 6;
                }
                bad
            })
        })
        .collect();
    // SIGTERM lands in the middle of the load: once every client has had answers.
    common::wait_until(
        "the clients are being served",
        std::time::Duration::from_secs(30),
        || ok.load(Ordering::SeqCst) >= 30,
    );
    let served_before = ok.load(Ordering::SeqCst);
    let status = daemon.stop();
    common::wait_until(
        "requests after the stop are refused",
        std::time::Duration::from_secs(30),
        || refused.load(Ordering::SeqCst) > 0,
    );
    done.store(true, Ordering::SeqCst);
    let bad: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(status.success(), "exit status {status}");
    assert!(served_before > 0, "no request was served before SIGTERM");
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "requests after the stop must be refused"
    );
    assert!(
        bad.is_empty(),
        "requests that neither completed nor were refused cleanly: {bad:?}"
    );
    eprintln!(
        "ok {} busy {} refused {}",
        ok.load(Ordering::SeqCst),
        busy.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
}

#[test]
fn cache_stays_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, "[cache]\nmax_entries = 40\nmax_bytes = 1000000\n").unwrap();
    let state = dir.path().join("state");
    let daemon = Daemon::start(&state, &["--config", config.to_str().unwrap()]);
    let agent = http();
    for (path, _) in common::test_images().iter().take(150) {
        let (status, _) = daemon.infer(&agent, &std::fs::read(path).unwrap(), "image/png");
        assert_eq!(status, 200);
    }
    let status = daemon.get_json("/v1/status");
    assert_eq!(status["cache"]["entries"], 40, "{status}");
    assert_eq!(status["cache"]["evictions"], 110, "{status}");
    assert!(daemon.stop().success());
    // A tighter byte bound at the next start evicts down to it.
    std::fs::write(&config, "[cache]\nmax_entries = 40\nmax_bytes = 4096\n").unwrap();
    let daemon = Daemon::start(&state, &["--config", config.to_str().unwrap()]);
    let status = daemon.get_json("/v1/status");
    let bytes = status["cache"]["bytes"].as_u64().unwrap();
    assert!(
        bytes <= 4096 && status["cache"]["entries"].as_u64().unwrap() < 40,
        "{status}"
    );
    let disk: u64 = walk_size(&state.join("cache"));
    eprintln!("cache on disk: {disk} bytes");
    assert!(disk < 8 * 1024 * 1024, "sled files grew to {disk} bytes");
    assert!(daemon.stop().success());
}

fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[workers]\nqueue = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("workers.queue") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn tells_systemd_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let state = dir.path().join("state");
    let daemon = Daemon::start_with_env(
        &state,
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification from the daemon");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1\n");
    // READY comes only once the API answers.
    assert_eq!(daemon.get_json("/v1/status")["slot"], "builtin");
    assert_eq!(recv(), "WATCHDOG=1\n");
    assert_eq!(recv(), "WATCHDOG=1\n");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let mut seen = recv();
    while seen == "WATCHDOG=1\n" {
        seen = recv();
    }
    assert_eq!(seen, "STOPPING=1\n");
    assert!(daemon.stop_wait().success());
}
