//! One request, one release (issue 28): requests through `/v1` and `/v2` while the model they name is swapped
//! between three releases as fast as the service allows: a digit classifier (1×1×28×28, 10 labels), MobileNetV2
//! (1×3×224×224, 1000 labels) and a digit detector, all under one name. Each request must be judged and run by the
//! one release it was admitted with: a `/v1` image gets that release's kind of answer, a v2 tensor is either run by
//! the release whose shape it has or refused (400) in the words of the one that judged it, never run by another
//! (which the old path turned into a 422 about images), and a v2 classification names the label of the release
//! that says it answered. Every request, refused or not, is counted once.
//!
//! In process: the real router and service on a free loopback port, real engines of real models, swapped through
//! the service's own `swap`, which is what an install or a rollback calls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::common;
use outpost::inference::{Engine, ModelSpec};
use outpost::wire::status::Serving;

const NAME: &str = "race";

/// A release of `file` under the race's name, as version `version`.
fn release(file: &str, spec: &str, version: u64) -> Engine {
    let mut spec = ModelSpec::from_file(&common::models().join(spec)).unwrap();
    spec.name = NAME.into();
    spec.version = version;
    Engine::load(&std::fs::read(common::models().join(file)).unwrap(), spec).unwrap()
}

#[test]
fn a_swap_in_the_middle_of_v1_and_v2_requests_never_mixes_two_releases() {
    let releases = [
        Arc::new(release("edge-fp32.onnx", "edge-fp32.spec.json", 1)),
        Arc::new(release(
            "mobilenetv2-fp32.onnx",
            "mobilenetv2-fp32.spec.json",
            2,
        )),
        Arc::new(release(
            "det/det-edge-fp32.onnx",
            "det/det-edge-fp32.spec.json",
            3,
        )),
    ];
    let labels: Vec<Vec<String>> = releases.iter().map(|e| e.spec().labels.clone()).collect();
    let digit = releases[0].spec().input.shape.clone();

    let state = tempfile::tempdir().unwrap();
    let config = outpost::config::Config::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = Arc::new(outpost::worker::Pool::start(2, 256));
    let service = Arc::new(outpost::serve::Service::new(
        NAME,
        (*releases[0]).clone(),
        pool,
        None,
        &config,
    ));
    let registry = Arc::new(outpost::serve::Registry::new(
        NAME,
        service.clone(),
        Arc::new(outpost::clock::Clock::open(state.path())),
        Arc::new(outpost::trust::LiveTrust::open(state.path(), Ok(None))),
    ));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, outpost::api::router(registry)).await });

    // The swapper: the three releases in turn, as fast as it can, until the clients are done.
    let done = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (service, done, swaps, releases) = (
            service.clone(),
            done.clone(),
            swaps.clone(),
            releases.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                i = (i + 1) % releases.len();
                service.swap(releases[i].clone(), Serving::Builtin);
                swaps.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
        })
    };

    let image = std::fs::read(common::models().join("data/test/0000_4.png")).unwrap();
    let tensor: Vec<f32> = releases[0]
        .tensor_from_image(&image, &Default::default())
        .unwrap();
    let per_client = 150;
    let clients: Vec<_> = (0..3)
        .map(|way| {
            let (image, tensor, labels, digit) =
                (image.clone(), tensor.clone(), labels.clone(), digit.clone());
            std::thread::spawn(move || {
                let agent = common::http();
                let mut by_version = [0u32; 4];
                let mut refused = 0u32;
                for _ in 0..per_client {
                    let (code, body) = match way {
                        0 => post(&agent, addr, "/v1/infer", "image/png", &image),
                        1 => post(
                            &agent,
                            addr,
                            &format!("/v2/models/{NAME}/infer"),
                            "application/json",
                            &serde_json::to_vec(&serde_json::json!({
                                "inputs": [{"name": "input", "shape": digit, "datatype": "FP32", "data": tensor}],
                                "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
                            }))
                            .unwrap(),
                        ),
                        // The image as one BYTES element in the binary part, as tritonclient sends it.
                        _ => {
                            let header = serde_json::to_vec(&serde_json::json!({
                                "inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                            "parameters": {"binary_data_size": 4 + image.len()}}],
                                "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
                            }))
                            .unwrap();
                            let mut body = header.clone();
                            body.extend((image.len() as u32).to_le_bytes());
                            body.extend(&image);
                            post_split(&agent, addr, header.len(), &body)
                        }
                    };
                    match (way, code) {
                        (0, 200) => {
                            let version = body["model"]["version"].as_u64().unwrap();
                            by_version[version as usize] += 1;
                            if version == 3 {
                                assert_eq!(body["task"], "detection", "{body}");
                            } else {
                                let answer: outpost::serve::InferResponse =
                                    serde_json::from_value(body.clone()).unwrap();
                                assert!(
                                    labels[version as usize - 1].contains(&answer.label),
                                    "release {version} answered a label it does not have: {body}"
                                );
                            }
                        }
                        (1 | 2, 200) => {
                            let version: u64 = body["model_version"]
                                .as_str()
                                .unwrap()
                                .parse()
                                .unwrap();
                            by_version[version as usize] += 1;
                            assert!(way == 2 || version == 1, "only release 1 takes a 28×28 tensor: {body}");
                            let class = body["outputs"][0]["data"][0].as_str().unwrap();
                            let mut parts = class.splitn(3, ':');
                            let (_, index, label) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
                            let index: usize = index.parse().unwrap();
                            assert_eq!(
                                labels[version as usize - 1][index], label,
                                "the label of another release: {body}"
                            );
                        }
                        (1, 400) => {
                            // Judged by MobileNetV2 or the detector, in their own words.
                            let e = body["error"].as_str().unwrap();
                            assert!(
                                e.contains("[1, 3, 224, 224]") || e.contains("its outputs are detection_boxes"),
                                "refused by the release that judged it: {body}"
                            );
                            refused += 1;
                        }
                        (2, 400) => {
                            // The detector has no classifier's output.
                            let e = body["error"].as_str().unwrap();
                            assert!(e.contains("its outputs are detection_boxes"), "{body}");
                            refused += 1;
                        }
                        _ => panic!("way {way}: {code} {body}"),
                    }
                }
                (by_version, refused)
            })
        })
        .collect();
    let results: Vec<([u32; 4], u32)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    swapper.join().unwrap();

    let swaps = swaps.load(Ordering::Relaxed);
    eprintln!("{swaps} swaps; answered by release 1/2/3 and refused, per way: {results:?}");
    // The race happened: every release answered requests of /v1, and the tensor was both run and refused.
    assert!(results[0].0[1..].iter().all(|n| *n > 0), "{results:?}");
    assert!(results[1].0[1] > 0 && results[1].1 > 0, "{results:?}");
    assert!(swaps > 3 * per_client as u64, "{swaps} swaps");
    // Every request was counted once, refused or answered, whichever protocol brought it.
    let counts = service.status().counters;
    assert_eq!(counts.requests, 3 * per_client as u64, "{counts:?}");
    let refused: u32 = results.iter().map(|r| r.1).sum();
    assert_eq!(counts.bad_input, refused as u64, "{counts:?}");
}

/// A v2 request whose JSON part is followed by binary data.
fn post_split(
    agent: &ureq::Agent,
    addr: std::net::SocketAddr,
    json_len: usize,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let path = format!("/v2/models/{NAME}/infer");
    let len = json_len.to_string();
    send(
        agent,
        addr,
        &path,
        "application/octet-stream",
        Some(&len),
        body,
    )
}

fn post(
    agent: &ureq::Agent,
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    send(agent, addr, path, content_type, None, body)
}

fn send(
    agent: &ureq::Agent,
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    header_length: Option<&str>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut request = agent
        .post(&format!("http://{addr}{path}"))
        .header("content-type", content_type);
    if let Some(n) = header_length {
        request = request.header("inference-header-content-length", n);
    }
    let mut r = request.send(body).expect("HTTP request");
    let code = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}
