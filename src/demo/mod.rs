//! `outpost-demo`: the whole system in one process, narrated, on a machine with nothing installed.
//!
//! An embedded broker (rumqttd; demo feature only, never in the device build), one agent, one cloud worker, a bundle
//! server and an operator, all through the same library calls the real binaries make. Between the agent and the
//! broker sits a small TCP relay, so the demo can cut the agent's link and restore it.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::bundle::build::{build, Build};
use crate::bundle::SigningKeyFile;
use crate::config::{Config, HardnessScore};
use crate::fleet::mqtt::{Broker, Settings, TlsFiles};
use crate::fleet::operator::{self, Outgoing, Progress};
use crate::inference::ModelSpec;
use crate::wire::command::{Action, Target};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_broker(port: u16) -> Result<()> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10
[v5.1]
name = "v5-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 0
[v5.1.connections]
connection_timeout_ms = 60000
max_payload_size = 8388608
max_inflight_count = 500
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).context("embedded broker config")?;
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("embedded broker stopped: {e}");
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the embedded broker did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A TCP relay from `port` to the broker that can be cut (every connection dropped, nothing accepted) and restored.
struct Relay {
    port: u16,
    broker: u16,
    cut: CancellationToken,
}

impl Relay {
    async fn start(broker: u16) -> Result<Relay> {
        let mut r = Relay {
            port: free_port()?,
            broker,
            cut: CancellationToken::new(),
        };
        r.restore().await?;
        Ok(r)
    }

    async fn restore(&mut self) -> Result<()> {
        self.cut = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let (cut, broker) = (self.cut.clone(), self.broker);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = cut.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let cut = cut.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", broker)).await
                    else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(())
    }

    fn cut(&self) {
        self.cut.cancel();
    }
}

fn settings(port: u16, role: &str) -> Settings {
    Settings {
        broker: Broker {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        },
        client_id: format!("demo-{role}"),
        tls: TlsFiles::default(),
        keep_alive: Duration::from_secs(10),
        max_packet: 8 * 1024 * 1024,
        session_expiry_s: 0,
        last_will: None,
    }
}

struct Quiet;
impl Progress for Quiet {
    fn status(&mut self, _: &crate::wire::status::OnlineStatus) {}
    fn ack(&mut self, _: &crate::wire::status::Ack) {}
}

fn test_images(models: &Path) -> Result<Vec<(Vec<u8>, String)>> {
    let dir = models.join("data/test");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("{} (run from the repository root)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let label = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit('_').next())
                .unwrap_or("")
                .to_string();
            Ok((std::fs::read(&p)?, label))
        })
        .collect()
}

fn infer(http: &ureq::Agent, api: &str, image: &[u8]) -> Result<serde_json::Value> {
    let mut r = http
        .post(&format!("http://{api}/v1/infer"))
        .header("content-type", "image/png")
        .send(image)?;
    Ok(serde_json::from_str(&r.body_mut().read_to_string()?)?)
}

fn status(http: &ureq::Agent, api: &str) -> Result<serde_json::Value> {
    let mut r = http.get(&format!("http://{api}/v1/status")).call()?;
    Ok(serde_json::from_str(&r.body_mut().read_to_string()?)?)
}

fn step(n: usize, title: &str) {
    println!("\n== {n}. {title}");
}

/// Runs the demo; `models` is the repository's models/ folder.
pub async fn run(models: PathBuf) -> Result<()> {
    let t0 = Instant::now();
    let work = tempfile::tempdir()?;
    let mut summary: Vec<(String, String)> = Vec::new();
    let shutdown = CancellationToken::new();

    step(
        0,
        "Starting an embedded MQTT broker, an agent, a cloud worker and an operator",
    );
    let broker_port = free_port()?;
    start_broker(broker_port)?;
    let mut relay = Relay::start(broker_port).await?;
    println!("   broker on 127.0.0.1:{broker_port}; the agent reaches it through a relay on {} (so its link can be cut)", relay.port);
    let key = SigningKeyFile::generate()?;
    let key_path = work.path().join("operator.key");
    key.save(&key_path)?;
    let trusted = work.path().join("trusted-keys");
    std::fs::write(&trusted, format!("{}\n", key.trusted_line("demo operator")))?;
    // The cloud worker signs its answers; the device believes only this key's.
    let cloud_key = Arc::new(SigningKeyFile::generate()?);
    let cloud_keys = work.path().join("cloud-keys");
    std::fs::write(
        &cloud_keys,
        format!("{}\n", cloud_key.trusted_line("demo cloud worker")),
    )?;

    let mut config = Config::default();
    config.agent.state_dir = work.path().join("state");
    config.api.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.slots.trusted_keys = Some(trusted.clone());
    config.fleet.broker = Some(format!("mqtt://127.0.0.1:{}", relay.port));
    config.fleet.device_id = "demo-device".into();
    config.forward.score = HardnessScore::MaxProb;
    config.forward.threshold = Some(0.9);
    config.forward.deadline_ms = 500;
    config.forward.resend_per_s = 100;
    config.forward.retry_ms = 1000;
    config.forward.cloud_keys = Some(cloud_keys);
    config.probation.requests = 200;
    config.probation.min_samples = 30;
    let agent_token = shutdown.clone();
    let agent_config = config.clone();
    let agent = tokio::spawn(async move { crate::agent::run(agent_config, agent_token).await });
    let addr_file = crate::agent::api_addr_file(&config.agent.state_dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    let api = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            break a;
        }
        if Instant::now() > deadline || agent.is_finished() {
            bail!("the agent did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cloud_engine = Arc::new(crate::inference::Engine::load_files(
        &models.join("cloud-fp32.onnx"),
        None,
    )?);
    let stats = Arc::new(crate::fleet::cloud::WorkerStats::default());
    let (s, st, tok, ds) = (
        settings(broker_port, "cloud"),
        stats.clone(),
        shutdown.clone(),
        work.path().join("cloud-dataset"),
    );
    tokio::spawn(async move {
        let models = Arc::new(crate::fleet::cloud::CloudModels::one(cloud_engine));
        crate::fleet::cloud::run_worker(s, models, cloud_key, ds, st, tok).await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    println!("   agent API on {api}, device id demo-device; cloud worker: cloud-fp32");

    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let images = Arc::new(test_images(&models)?);

    step(
        1,
        "Local inference on 300 held-out digits, then the same 300 again",
    );
    let (mut correct, mut edge, mut cloud, mut first_ms) = (0, 0, 0, Vec::new());
    for (img, label) in images.iter().take(300) {
        let t = Instant::now();
        let v = infer(&http, &api, img)?;
        first_ms.push(t.elapsed().as_secs_f64() * 1e3);
        correct += (v["label"] == label.as_str()) as usize;
        match v["source"].as_str() {
            Some("cloud") => cloud += 1,
            _ => edge += 1,
        }
    }
    let mut hits = 0;
    for (img, _) in images.iter().take(300) {
        let v = infer(&http, &api, img)?;
        hits += v["source"].as_str().is_some_and(|s| s.ends_with("cache")) as usize;
    }
    first_ms.sort_by(f64::total_cmp);
    println!(
        "   first pass: {correct}/300 correct, {edge} answered on the device, {cloud} hard cases answered by the cloud; p50 {:.1} ms",
        first_ms[150]
    );
    println!("   second pass: {hits}/300 answered from the result cache (the same input for the same model)");
    summary.push((
        "accuracy, first 300 (edge + cloud)".into(),
        format!("{correct}/300"),
    ));
    summary.push(("cache hits on repeats".into(), format!("{hits}/300")));

    step(2, "Hard cases: low-confidence inputs go to the cloud model");
    let mut shown = 0;
    let mut forwarded = 0;
    for (img, label) in images.iter().skip(300).take(400) {
        let v = infer(&http, &api, img)?;
        if v["source"] == "cloud" {
            forwarded += 1;
            if shown < 3 {
                shown += 1;
                println!(
                    "   edge said {} ({}), cloud says {} (truth {label})",
                    v["edge_label"], v["model"]["name"], v["label"]
                );
            }
        }
    }
    println!("   {forwarded} of 400 new inputs were hard enough to forward (max-prob < 0.9)");
    summary.push(("forwarded to the cloud".into(), format!("{forwarded}/400")));

    // A steady client for the update steps: every answer must be a 200.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok_count, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok_count, failed, images, http, api) = (
            stop.clone(),
            ok_count.clone(),
            failed.clone(),
            images.clone(),
            http.clone(),
            api.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 700;
            while !stop.load(Ordering::SeqCst) {
                let r = http
                    .post(&format!("http://{api}/v1/infer"))
                    .header("content-type", "image/png")
                    .send(&images[i % images.len()].0[..]);
                match r {
                    Ok(resp) if resp.status() == 200 => ok_count.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let bundle_of = |model: &str, spec: &str, version: u64| -> Result<PathBuf> {
        let mut spec = ModelSpec::from_file(&models.join(format!("{spec}.spec.json")))?;
        // Every release here is one of the device's model, the built-in edge-int8: a bundle installs into the model
        // it names.
        spec.name = "edge-int8".into();
        let golden = test_images(&models)?
            .into_iter()
            .take(8)
            .map(|(b, _)| b)
            .collect();
        let bytes = build(Build {
            spec,
            variants: vec![(
                "default".into(),
                std::fs::read(models.join(format!("{model}.onnx")))?,
            )],
            golden_images: golden,
            golden_tensors: Vec::new(),
            version,
            expires_in_s: 3600,
            tolerance: 0.05,
            hardness_threshold: None,
            budget: None,
            calibration: Vec::new(),
            keys: &[&key],
            forms: crate::bundle::build::Forms::Both,
        })?;
        let path = work.path().join(format!("{model}-v{version}.bundle"));
        std::fs::write(&path, bytes)?;
        Ok(path)
    };
    let publish = |path: PathBuf, version: u64| {
        let shutdown = shutdown.clone();
        let key_path = key_path.clone();
        async move {
            let offer = crate::fleet::serve::make_offer(&path, 16 * 1024)?;
            let served = Arc::new(crate::fleet::serve::Served::default());
            let serve_token = shutdown.child_token();
            tokio::spawn(crate::fleet::serve::serve(
                settings(broker_port, &format!("serve-{version}")),
                vec![(offer.clone(), path)],
                served,
                serve_token.clone(),
            ));
            let (client, mut events) = operator::connect(
                &settings(broker_port, &format!("op-{version}")),
                shutdown.child_token(),
            )
            .await?;
            let key = SigningKeyFile::load(&key_path)?;
            let out = Outgoing {
                target: Target::Device("demo-device".into()),
                action: Action::Update(offer.clone()),
                model: None,
                seq: operator::default_seq(),
                expires_in: Duration::from_secs(300),
            };
            let acks = operator::send(
                &client,
                &mut events,
                &out,
                &[&key],
                Duration::from_secs(120),
                &mut Quiet,
            )
            .await?;
            serve_token.cancel();
            let _ = client.disconnect().await;
            anyhow::Ok((offer, acks))
        }
    };

    step(
        3,
        "A signed v2 (edge fp32) published, fetched in chunks, swapped under load",
    );
    let t = Instant::now();
    let v2 = bundle_of("edge-fp32", "edge-fp32", 2)?;
    let (offer, acks) = publish(v2, 2).await?;
    let ack = acks.first().context("no acknowledgement from the device")?;
    let installed = match (ack.ok, ack.outcome()) {
        (true, Some(o)) => o.installed.clone().zip(o.slot),
        _ => None,
    };
    let Some((installed, slot)) = installed else {
        bail!("v2 was not installed: {}", ack.to_json());
    };
    println!(
        "   {} bytes in {} chunks, installed in slot {} ({}) after {:.1} s",
        offer.size,
        offer.chunks.len(),
        slot.name(),
        installed.reason,
        t.elapsed().as_secs_f64()
    );
    let fp32 = installed.digest;
    wait(
        || Ok(status(&http, &api)?["model"]["digest"] == fp32.as_str()),
        "v2 serving",
    )
    .await?;
    // Probation: 200 requests on v2 commit it.
    wait(
        || Ok(status(&http, &api)?["trial"].is_null()),
        "v2 committed after its trial",
    )
    .await?;
    println!(
        "   v2 passed probation and was committed; requests so far: {} ok, {} failed",
        ok_count.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    summary.push(("v2 update".into(), "fetched, installed, committed".into()));

    step(4, "A tampered bundle is refused");
    let v3 = bundle_of("edge-int8", "edge-int8", 3)?;
    let mut bytes = std::fs::read(&v3)?;
    let n = bytes.len();
    bytes[n - 100] ^= 0x01; // one bit in the model
    let tampered = work.path().join("tampered.bundle");
    std::fs::write(&tampered, bytes)?;
    let (_, acks) = publish(tampered, 3).await?;
    let refused = acks
        .first()
        .and_then(|a| a.error.clone())
        .unwrap_or_else(|| "no answer".into());
    println!("   refused: {refused}");
    if acks.first().is_some_and(|a| a.ok) {
        bail!("a tampered bundle was accepted");
    }
    summary.push(("tampered bundle".into(), "refused".into()));

    step(
        5,
        "A bad model: passes its quality gate, but its confidence collapses on live data",
    );
    let bad = bundle_of("edge-flat", "edge-flat", 4)?;
    let (_, acks) = publish(bad, 4).await?;
    if acks.first().is_none_or(|a| !a.ok) {
        bail!("the bad model was not installed: {acks:?}");
    }
    println!("   v4 installed and on trial; traffic continues...");
    wait(
        || Ok(status(&http, &api)?["last_transition"]["transition"] == "rollback"),
        "the automatic rollback",
    )
    .await?;
    let st = status(&http, &api)?;
    println!(
        "   rolled back automatically: {}",
        st["last_transition"]["detail"]
    );
    println!("   serving version {} again", st["model"]["version"]);
    summary.push(("bad model v4".into(), "rolled back on probation".into()));

    stop.store(true, Ordering::SeqCst);
    let _ = load.join();
    let (ok_n, failed_n) = (
        ok_count.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    println!("   requests during steps 3-5: {ok_n} answered, {failed_n} failed");
    summary.push((
        "requests failed during updates".into(),
        format!("{failed_n} of {}", ok_n + failed_n),
    ));

    step(
        6,
        "The agent's link is cut; hard cases are kept and delivered when it returns",
    );
    relay.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = stats.stored.load(Ordering::SeqCst);
    let mut queued = 0;
    for (img, _) in images.iter().skip(1100).take(150) {
        let v = infer(&http, &api, img)?;
        queued += (v["forwarded"] == "queued") as usize;
    }
    let pending = status(&http, &api)?["forward"]["outbox"]["pending"]
        .as_u64()
        .unwrap_or(0);
    println!("   link down: {queued} hard cases answered on the device and queued; outbox holds {pending}");
    relay.restore().await?;
    wait(
        || Ok(status(&http, &api)?["forward"]["outbox"]["pending"] == 0),
        "the outbox to drain",
    )
    .await?;
    let delivered = stats.stored.load(Ordering::SeqCst) - before;
    println!("   link back: {delivered} cases delivered to the cloud worker, outbox empty");
    summary.push((
        "hard cases during the outage".into(),
        format!("{queued} queued, {delivered} delivered"),
    ));

    println!("\n== Summary ({:.0} s)\n", t0.elapsed().as_secs_f64());
    println!("| step | result |");
    println!("|---|---|");
    for (k, v) in &summary {
        println!("| {k} | {v} |");
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    if failed_n > 0 || delivered < queued as u64 {
        bail!("the demo saw failed requests or undelivered cases");
    }
    Ok(())
}

async fn wait(mut cond: impl FnMut() -> Result<bool>, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if cond().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
