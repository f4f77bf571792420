//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn models() -> PathBuf {
    repo().join("models")
}

/// The held-out test split: (path, true label), sorted by file name (`NNNN_L.png`).
pub fn test_images() -> Vec<(PathBuf, String)> {
    split_images("test")
}

pub fn split_images(split: &str) -> Vec<(PathBuf, String)> {
    let dir = models().join("data").join(split);
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let label = stem.rsplit('_').next().unwrap().to_string();
            (p, label)
        })
        .collect();
    out.sort();
    out
}

/// Golden vectors written by models/make_models.py with onnxruntime.
#[derive(serde::Deserialize)]
pub struct Golden {
    pub model: String,
    pub input_file: String,
    pub input_shape: Vec<usize>,
    pub cases: Vec<GoldenCase>,
}

#[derive(serde::Deserialize)]
pub struct GoldenCase {
    pub image: Option<String>,
    pub output: Vec<f32>,
}

impl Golden {
    pub fn load(stem: &str) -> (Golden, Vec<Vec<f32>>) {
        let dir = models();
        let g: Golden = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{stem}.golden.json"))).unwrap(),
        )
        .unwrap();
        let raw = std::fs::read(dir.join(&g.input_file)).unwrap();
        let n: usize = g.input_shape.iter().product();
        let floats: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(floats.len(), n * g.cases.len(), "golden input file size");
        let inputs = floats.chunks(n).map(<[f32]>::to_vec).collect();
        (g, inputs)
    }
}

/// Largest |a - b| over two outputs of the same length.
#[allow(dead_code)]
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "outputs of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A real `outpost run` process on a free port with its own state dir; SIGKILLed when dropped.
pub struct Daemon {
    pub child: Option<std::process::Child>,
    pub addr: String,
    pub state_dir: PathBuf,
}

pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into()
}

impl Daemon {
    pub fn start(state_dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(state_dir, extra, &[])
    }

    pub fn start_with_env(state_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_bin(
            Path::new(env!("CARGO_BIN_EXE_outpost")),
            state_dir,
            extra,
            env,
        )
    }

    /// [`Daemon::start_with_env`] with another `outpost` binary (the slim device build, [`slim_outpost`]).
    pub fn start_bin(bin: &Path, state_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(bin, state_dir, extra, env, std::process::Stdio::inherit())
    }

    /// [`Daemon::start_with_env`] with the daemon's log (stderr) appended to `log`, for tests that count its lines.
    pub fn start_logged(
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the daemon's log file");
        Daemon::spawn(
            Path::new(env!("CARGO_BIN_EXE_outpost")),
            state_dir,
            extra,
            env,
            file.into(),
        )
    }

    fn spawn(
        bin: &Path,
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: std::process::Stdio,
    ) -> Daemon {
        let addr_file = state_dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut args = vec![
            "run",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut child = std::process::Command::new(bin)
            .args(&args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stderr(stderr)
            .spawn()
            .expect("start outpost run");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                break a;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("outpost run exited early: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "outpost run did not become ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Daemon {
            child: Some(child),
            addr,
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// POSTs bytes to /v1/infer; returns (status, JSON body).
    pub fn infer(
        &self,
        agent: &ureq::Agent,
        body: &[u8],
        content_type: &str,
    ) -> (u16, serde_json::Value) {
        let mut resp = agent
            .post(&self.url("/v1/infer"))
            .header("content-type", content_type)
            .send(body)
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Waits until the named model answers (models beyond the first load after the API is up): its v2 readiness.
    pub fn wait_model(&self, name: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let url = self.url(&format!("/v2/models/{name}/ready"));
        while http().get(&url).call().map(|r| r.status().as_u16()).ok() != Some(200) {
            assert!(
                std::time::Instant::now() < deadline,
                "model {name} is not served after 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The Prometheus text of /metrics.
    pub fn metrics(&self) -> String {
        http()
            .get(&self.url("/metrics"))
            .call()
            .expect("GET /metrics")
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// POSTs a JSON body (an Open Inference Protocol request); the status and the JSON answer.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut r = http()
            .post(&self.url(path))
            .header("content-type", "application/json")
            .send(serde_json::to_vec(body).unwrap().as_slice())
            .expect("HTTP request");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let mut resp = http().get(&self.url(path)).call().expect("GET");
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// Waits until the agent says its fleet link is up: connected, and every subscription acknowledged by the
    /// broker, so a command, a chunk or a cloud answer sent from now on reaches it.
    pub fn wait_link_up(&self) {
        wait_until(
            "the agent's fleet link is up (status link.subscribed)",
            std::time::Duration::from_secs(30),
            || self.local_status().host.link.is_some_and(|l| l.subscribed),
        );
    }

    /// `GET /v1/status`, read through the library's type (a renamed field fails the build, not the test).
    pub fn local_status(&self) -> outpost::wire::status::LocalStatus {
        serde_json::from_value(self.get_json("/v1/status"))
            .expect("the status parses as LocalStatus")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for an exit already requested.
    pub fn stop_wait(mut self) -> std::process::ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.take().unwrap().wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn outpost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .unwrap()
}

/// The slim device build of `outpost` (no ONNX front end), which scripts/test.sh builds before the tests and names
/// in `OUTPOST_SLIM_BIN` (a test cannot run cargo itself: the build directory is locked while tests run).
pub fn slim_outpost() -> PathBuf {
    let bin = std::env::var_os("OUTPOST_SLIM_BIN").map(PathBuf::from).expect(
        "OUTPOST_SLIM_BIN is not set: run the tests with scripts/test.sh, which builds the slim device binary \
         (cargo build --no-default-features --bin outpost) and sets it",
    );
    assert!(
        bin.is_file(),
        "OUTPOST_SLIM_BIN={} is not a file",
        bin.display()
    );
    bin
}

/// The release build of `outpost` (what a device runs), which scripts/test.sh builds before the tests and names in
/// `OUTPOST_RELEASE_BIN`.
pub fn release_outpost() -> PathBuf {
    let bin = std::env::var_os("OUTPOST_RELEASE_BIN").map(PathBuf::from).expect(
        "OUTPOST_RELEASE_BIN is not set: run the tests with scripts/test.sh, which builds the release binary \
         (cargo build --release --bin outpost) and sets it",
    );
    assert!(
        bin.is_file(),
        "OUTPOST_RELEASE_BIN={} is not a file",
        bin.display()
    );
    bin
}

pub fn outpostctl(args: &[&str]) -> Output {
    outpostctl_env(args, &[])
}

/// [`outpostctl`] with more environment (libfaketime's, to sign at another date).
pub fn outpostctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpostctl"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The environment that runs a program at the fixed date `unix` (UTC) under libfaketime, from Debian's `faketime`
/// package (scripts/test.sh installs it): the real clock of the real binary is faked, through no variable of the
/// agent's own. The monotonic clock is left alone, so timers and timeouts behave.
pub fn faketime_env(unix: u64) -> Vec<(&'static str, String)> {
    let lib = ["x86_64-linux-gnu", "aarch64-linux-gnu", "arm-linux-gnueabihf"]
        .iter()
        .map(|t| PathBuf::from(format!("/usr/lib/{t}/faketime/libfaketime.so.1")))
        .find(|p| p.is_file())
        .expect("libfaketime is not installed: run the tests with scripts/test.sh, which installs the Debian package faketime");
    let date = outpost::clock::show(unix)
        .replace('T', " ")
        .replace('Z', "");
    vec![
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME", date),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ("TZ", "UTC".into()),
    ]
}

/// The final acknowledgement `outpostctl publish --json` printed, after checking that it succeeded.
pub fn final_ack(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .last()
        .expect("publish printed no acknowledgement");
    serde_json::from_str(last).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Two operator keys made by `outpostctl keygen` and a trusted-key file listing both; a cloud worker's key and the
/// file that lists it (`--cloud-keys`).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key1: PathBuf,
    pub key2: PathBuf,
    pub trusted: PathBuf,
    pub cloud_key: PathBuf,
    pub cloud_keys: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key1 = dir.path().join("k1.key");
        let key2 = dir.path().join("k2.key");
        let mut trusted = String::new();
        for k in [&key1, &key2] {
            let out = outpostctl(&["keygen", "--out", s(k)]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            trusted.push_str(&String::from_utf8(out.stdout).unwrap());
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(k).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let path = dir.path().join("trusted-keys");
        std::fs::write(&path, trusted).unwrap();
        let cloud_key = dir.path().join("cloud.key");
        let out = outpostctl(&["keygen", "--out", s(&cloud_key)]);
        assert!(out.status.success());
        let cloud_keys = dir.path().join("cloud-keys");
        std::fs::write(&cloud_keys, &out.stdout).unwrap();
        Fixture {
            dir,
            key1,
            key2,
            trusted: path,
            cloud_key,
            cloud_keys,
        }
    }

    /// The flags that put an agent on `broker_url` as device `id`, trusting the fixture's operator and cloud keys.
    pub fn fleet_args<'a>(&'a self, broker_url: &'a str, id: &'a str) -> Vec<&'a str> {
        vec![
            "--broker",
            broker_url,
            "--device-id",
            id,
            "--trusted-keys",
            s(&self.trusted),
            "--cloud-keys",
            s(&self.cloud_keys),
        ]
    }

    /// A reference cloud worker (`outpostctl cloud`, cloud-fp32) signing with `cloud_key`, given time to subscribe.
    pub fn cloud_worker(&self, broker_url: &str, dataset: &Path, extra: &[&str]) -> KillOnDrop {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpostctl"));
        cmd.args(["cloud", "--broker", broker_url, "--dataset", s(dataset)])
            .args(["--model", s(&models().join("cloud-fp32.onnx"))])
            .args(["--key", s(&self.cloud_key)])
            .args(extra);
        spawn_ready(cmd, "cloud worker ready")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A bundle of one of the committed models with the edge spec, made by `outpostctl bundle`.
    pub fn bundle(
        &self,
        name: &str,
        model: &str,
        version: u64,
        keys: &[&Path],
        extra: &[&str],
    ) -> PathBuf {
        self.bundle_with_spec(name, model, "edge-int8", version, keys, extra)
    }

    /// The same with `<spec>.spec.json`, named `edge-int8` (the built-in model: the bundle updates it) unless `extra`
    /// has a `--name`.
    pub fn bundle_with_spec(
        &self,
        name: &str,
        model: &str,
        spec: &str,
        version: u64,
        keys: &[&Path],
        extra: &[&str],
    ) -> PathBuf {
        self.bundle_env(name, model, spec, version, keys, extra, &[])
    }

    /// [`Fixture::bundle_with_spec`] made with more environment (libfaketime's: a bundle signed at another date).
    #[allow(clippy::too_many_arguments)]
    pub fn bundle_env(
        &self,
        name: &str,
        model: &str,
        spec: &str,
        version: u64,
        keys: &[&Path],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> PathBuf {
        let out = self.path(name);
        let models = models();
        let mut args = vec![
            "bundle".to_string(),
            "--model".into(),
            models.join(format!("{model}.onnx")).display().to_string(),
            "--spec".into(),
            models
                .join(format!("{spec}.spec.json"))
                .display()
                .to_string(),
            "--version".into(),
            version.to_string(),
            "--golden-images".into(),
            models.join("data/calib").display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        for k in keys {
            args.push("--key".into());
            args.push(k.display().to_string());
        }
        // ONNX only unless the test asks for forms: tests that follow a model by its file digest (fault injection,
        // status checks) need the variant they bundled to be the one served, not its NNEF form (tests/it/slim.rs and
        // the raw bundle tests bundle both forms).
        if !extra.contains(&"--forms") {
            args.extend(["--forms".to_string(), "onnx".to_string()]);
        }
        // A release of the device's (built-in) model unless the test names another.
        if !extra.contains(&"--name") {
            args.extend(["--name".to_string(), "edge-int8".to_string()]);
        }
        args.extend(extra.iter().map(|x| x.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = outpostctl_env(&args, env);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    }

    /// A bundle of `model` (with its own spec) released as the device model `name`, signed with key 1.
    pub fn named_bundle(&self, file: &str, model: &str, name: &str, version: u64) -> PathBuf {
        self.bundle_with_spec(
            file,
            model,
            model,
            version,
            &[&self.key1],
            &["--name", name],
        )
    }

    /// Installs `bundle` into `state` with the CLI and commits it at once (`promote --model`): a second model
    /// already live before the daemon starts.
    pub fn install_committed(&self, state: &Path, bundle: &Path, model: &str) {
        self.install_ok(state, bundle, &[]);
        let out = outpost(&["promote", "--state-dir", s(state), "--model", model]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// [`Fixture::install`] that must succeed.
    pub fn install_ok(&self, state: &Path, bundle: &Path, extra: &[&str]) {
        let out = self.install(state, bundle, extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn install(&self, state: &Path, bundle: &Path, extra: &[&str]) -> Output {
        self.install_with(
            Path::new(env!("CARGO_BIN_EXE_outpost")),
            state,
            bundle,
            extra,
            &[],
        )
    }

    /// [`Fixture::install`] by another `outpost` binary (the release build) with more environment (libfaketime's:
    /// a device whose clock reads another date).
    pub fn install_with(
        &self,
        bin: &Path,
        state: &Path,
        bundle: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut args = vec![
            "install",
            "--state-dir",
            s(state),
            "--trusted-keys",
            s(&self.trusted),
        ];
        args.extend_from_slice(extra);
        args.push(s(bundle));
        Command::new(bin)
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

pub fn status(state: &Path) -> serde_json::Value {
    let o = outpost(&["status", "--state-dir", s(state)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A real mosquitto on a free loopback port, with its config and persistence in a temp dir; killed by pid on drop.
pub struct Mosquitto {
    child: Option<std::process::Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
}

/// A free loopback port that no other test of this process has been given. A test that SIGKILLs its broker and
/// starts it again on the same port leaves the port free meanwhile; handed to a parallel test, the first test's
/// agent would reconnect to the other test's broker and feed its workers (the likely cause of one case stored by
/// both workers of tests/it/forward.rs's shared-subscription test, 1 run in 3 of that file).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Mosquitto {
    /// Plain MQTT with persistence (so a restart keeps sessions and queued messages).
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|_, port| {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n")
        })
    }

    /// `listener` builds the listener section from the temp dir and the port.
    pub fn start_with(listener: impl Fn(&Path, u16) -> String) -> Mosquitto {
        let which = Command::new("mosquitto").arg("-h").output();
        assert!(
            which.is_ok(),
            "mosquitto is not installed: run scripts/test.sh (it installs it), or apt-get install -y mosquitto"
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        // A free port can be taken by a parallel test between the probe and mosquitto's bind: then our broker
        // exits, and a test would talk to the other test's broker (found: a cloud case answered by two tests'
        // workers). Another port is tried until our own broker holds it.
        let mut m = Mosquitto {
            child: None,
            port: 0,
            dir,
            conf,
        };
        for _ in 0..10 {
            m.port = free_port();
            let text = format!(
                "{}set_tcp_nodelay true\npersistence true\npersistence_location {}/\nautosave_interval 1\nuser root\nlog_dest stderr\nlog_type error\n",
                listener(m.dir.path(), m.port),
                m.dir.path().display()
            );
            std::fs::write(&m.conf, text).unwrap();
            if m.try_spawn() {
                return m;
            }
        }
        panic!("mosquitto could not hold a free port in 10 tries");
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "mosquitto could not listen on {} again (taken while it was down)",
            self.port
        );
    }

    /// Starts mosquitto and waits until it listens; false when it exited (its port was taken).
    fn try_spawn(&mut self) -> bool {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if self.exited() {
                return false;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Something listens; it is ours only if our process is still up once a failed bind would have ended it.
        std::thread::sleep(std::time::Duration::from_millis(100));
        !self.exited()
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash or power loss of the broker host would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port with the same persistence.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The retained message on `topic`, if one arrives within `timeout_s` (read with mosquitto_sub).
    pub fn retained(&self, topic: &str, timeout_s: u32) -> Option<serde_json::Value> {
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", topic])
            .args(["-C", "1", "-W", &timeout_s.to_string()])
            .output()
            .expect("mosquitto_sub (apt-get install -y mosquitto-clients)");
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

/// A helper process stopped with the test, even when it fails.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test CA in `dir` (`ca.pem`), a broker certificate for 127.0.0.1/localhost (`server.pem`, `server.key`) and one
/// client certificate per common name (`<cn>.pem`, `<cn>.key`), made with rcgen.
pub fn make_certs(dir: &Path, clients: &[&str]) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "outpost test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, cn: &str, file: &str| {
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let k = KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), c.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), k.serialize_pem()).unwrap();
    };
    leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        "broker",
        "server",
    );
    for cn in clients {
        leaf(vec![], cn, cn);
    }
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
}

/// Publishes raw bytes on a topic with mosquitto_pub.
pub fn raw_publish(broker: &Mosquitto, topic: &str, bytes: &[u8], dir: &Path) {
    mosquitto_pub(broker, topic, bytes, dir, false)
}

/// [`raw_publish`], retained (as a rollout's abandon is left on its group's topic).
pub fn raw_publish_retained(broker: &Mosquitto, topic: &str, bytes: &[u8], dir: &Path) {
    mosquitto_pub(broker, topic, bytes, dir, true)
}

fn mosquitto_pub(broker: &Mosquitto, topic: &str, bytes: &[u8], dir: &Path, retain: bool) {
    let file = dir.join("raw.bin");
    std::fs::write(&file, bytes).unwrap();
    let st = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", topic, "-f", s(&file)])
        .args(if retain { &["-r"][..] } else { &[][..] })
        .status()
        .unwrap();
    assert!(st.success());
}

/// The next acknowledgement the device publishes, read as the library's [`Ack`](outpost::wire::status::Ack): the
/// subscription is acknowledged by the broker (its SUBACK) before `act` runs, so the answer cannot be missed.
pub fn next_ack(
    broker: &Mosquitto,
    device: &str,
    act: impl FnOnce(),
) -> outpost::wire::status::Ack {
    use outpost::fleet::mqtt::{Broker, LinkEvent, Settings};
    use std::time::Duration;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = Settings {
        broker: Broker::parse(&broker.url()).unwrap(),
        client_id: format!("test-ack-{device}-{}", free_port()),
        tls: Default::default(),
        keep_alive: Duration::from_secs(30),
        max_packet: 4 << 20,
        session_expiry_s: 0,
        last_will: None,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ack = rt.block_on(async {
        let (client, mut events) = outpost::fleet::operator::connect(&settings, shutdown.clone())
            .await
            .unwrap();
        client
            .subscribe(
                format!("outpost/v1/device/{device}/ack"),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .ok()
                .flatten()
        };
        loop {
            match next().await {
                Some(LinkEvent::Subscribed) => break,
                Some(_) => continue,
                None => {
                    panic!("the broker did not acknowledge the subscription to {device}'s acks")
                }
            }
        }
        act();
        loop {
            match next().await {
                Some(LinkEvent::Message(p)) => {
                    break outpost::wire::status::Ack::from_json(&p.payload).unwrap_or_else(|e| {
                        panic!(
                            "an acknowledgement that does not read ({e}): {:?}",
                            String::from_utf8_lossy(&p.payload)
                        )
                    })
                }
                Some(_) => continue,
                None => panic!("no acknowledgement from {device} within 10 s"),
            }
        }
    });
    shutdown.cancel();
    ack
}

/// Waits for `child` to exit; fails the test after `timeout`.
pub fn wait_exit(child: &mut KillOnDrop, timeout: std::time::Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the process did not finish in {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The shifted digit stream (models/data/shifted/digits.bin, made by models/make_detectors.py): (PNG bytes, label).
pub fn shifted_stream() -> Vec<(Vec<u8>, String)> {
    let raw = std::fs::read(models().join("data/shifted/digits.bin")).unwrap();
    assert_eq!(raw.len() % 785, 0);
    raw.chunks_exact(785)
        .map(|r| {
            let img = image::GrayImage::from_raw(28, 28, r[1..].to_vec()).unwrap();
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            (png, r[0].to_string())
        })
        .collect()
}

/// POSTs an image to `path`; the status and the JSON answer.
pub fn post_image(daemon: &Daemon, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut r = http()
        .post(&daemon.url(path))
        .header("content-type", "image/png")
        .send(body)
        .expect("HTTP request");
    let code = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// `outpostctl rollout start` of `bundle` to `group` in two waves (50 %, 100 %) with short phases (2 s of shadow and
/// of observation, 5 shadow runs, every request shadowed), its output discarded; the caller waits for its exit (0
/// completed, 3 halted).
pub fn rollout(
    url: &str,
    f: &Fixture,
    state: &Path,
    group: &str,
    bundle: &Path,
    extra: &[&str],
) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_outpostctl"))
            .args(["rollout", "start", "--broker", url, "--key", s(&f.key1)])
            .args(["--state", s(state), "--group", group, "--waves", "50,100"])
            .args([
                "--shadow-s",
                "2",
                "--observe-s",
                "2",
                "--min-shadow-runs",
                "5",
            ])
            .args(["--shadow-fraction", "1", "--min-devices", "1"])
            .args(extra)
            .arg(bundle)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

impl Fixture {
    /// A config for `state` naming the fixture's operator keys, so that the first `outpost trust apply` stores the
    /// version 1 they make (as the daemon's first start does).
    pub fn trust_config(&self, state: &Path) -> PathBuf {
        let path = self.path("trust.toml");
        std::fs::write(
            &path,
            format!(
                "[agent]\nstate_dir = {:?}\n[slots]\ntrusted_keys = {:?}\nthreshold = 1\n",
                s(state),
                s(&self.trusted)
            ),
        )
        .unwrap();
        path
    }

    /// Version 1 as a device makes it from the fixture's operator keys.
    pub fn trust_v1(&self) -> outpost::trust::TrustDocument {
        let k = outpost::bundle::TrustedKeys::from_file(&self.trusted).unwrap();
        outpost::trust::TrustDocument::from_files(Some(&k), 1, None, None)
    }
}

/// The trust document stored in `state` (what the device trusts now).
pub fn stored_trust(state: &Path) -> outpost::trust::TrustDocument {
    let bytes = std::fs::read(state.join(outpost::trust::stored::TRUST_FILE)).unwrap();
    let (_, t) = outpost::trust::chain::decode(&bytes).unwrap();
    t.document().clone()
}

/// `doc`'s next version with `role`'s keys replaced by `keys` at `threshold` (keys added to the document's list).
pub fn with_role(
    doc: &outpost::trust::TrustDocument,
    role: &str,
    keys: &[&outpost::bundle::SigningKeyFile],
    threshold: u32,
) -> outpost::trust::TrustDocument {
    let mut d = doc.clone();
    for k in keys {
        if !d.keys.iter().any(|e| e.id == k.id()) {
            d.keys.push(outpost::trust::TrustKey {
                id: k.id(),
                kind: "ed25519".into(),
                public: hex::decode(k.public_hex()).unwrap(),
            });
        }
    }
    let entry = outpost::trust::RoleKeys {
        keys: keys.iter().map(|k| k.id()).collect(),
        threshold,
    };
    match d.roles.iter_mut().find(|(n, _)| n == role) {
        Some((_, r)) => *r = entry,
        None => d.roles.push((role.to_string(), entry)),
    }
    d
}

/// Signs `doc` as version `current + 1` with `keys` and writes it to `path`.
pub fn sign_trust(
    doc: &outpost::trust::TrustDocument,
    keys: &[&outpost::bundle::SigningKeyFile],
    path: &Path,
) -> Vec<u8> {
    let bytes = outpost::trust::chain::sign(doc, keys);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// How many operations a SIGKILL test runs: `OUTPOST_KILL_ITERATIONS`, else 200.
pub fn kill_iterations() -> usize {
    std::env::var("OUTPOST_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Kills a child process at a random instant of an operation, as the SIGKILL tests do: every tenth operation runs to
/// completion and is timed, and the others are killed at `fraction` of the 75th percentile of those times (one slow
/// outlier, a cold page cache or a busy machine, stretched the window of every later kill past most operations' end
/// when it was the maximum).
pub struct KillTimer {
    measured: Vec<std::time::Duration>,
    floor: std::time::Duration,
}

impl KillTimer {
    /// `floor`: the shortest window, before any operation was timed.
    pub fn new(floor: std::time::Duration) -> KillTimer {
        KillTimer {
            measured: Vec::new(),
            floor,
        }
    }

    /// Runs operation `i` to its end (every tenth) or kills it at `fraction` of the typical time; true when the
    /// kill landed before the operation ended.
    pub fn run(&mut self, child: &mut std::process::Child, i: usize, fraction: f64) -> bool {
        let started = std::time::Instant::now();
        if i.is_multiple_of(10) {
            let _ = child.wait();
            self.measured.push(started.elapsed());
            return false;
        }
        let mut sorted = self.measured.clone();
        sorted.sort();
        let typical = sorted
            .get(sorted.len().saturating_sub(1) * 3 / 4)
            .copied()
            .unwrap_or_default()
            .max(self.floor);
        std::thread::sleep(typical.mul_f64(fraction));
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            let _ = child.kill(); // SIGKILL
        }
        let _ = child.wait();
        killed
    }
}

/// `outpostctl simulate`: N agents in one process against a real broker.
pub struct Sim {
    pub child: KillOnDrop,
    pub report: PathBuf,
    pub ids: Vec<String>,
}

/// Starts `n` simulated agents in group `sim` and waits until each has published its status.
pub fn simulate(m: &Mosquitto, f: &Fixture, n: usize, rate: u32) -> Sim {
    simulate_as(m, f, "sim", n, rate, n, &[])
}

/// `n` agents named `<prefix>-NNNN`; waits until `online_total` devices of the group are online.
pub fn simulate_as(
    m: &Mosquitto,
    f: &Fixture,
    prefix: &str,
    n: usize,
    rate: u32,
    online_total: usize,
    extra: &[&str],
) -> Sim {
    let report = f.path(&format!("report-{prefix}.jsonl"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpostctl"))
        .args(["simulate", "--broker", &m.url(), "--agents", &n.to_string()])
        .args(["--prefix", prefix, "--group", "sim"])
        .args([
            "--dir",
            s(&f.path(&format!("state-{prefix}"))),
            "--trusted-keys",
            s(&f.trusted),
        ])
        .args(["--images", s(&models().join("data/test"))])
        .args(["--rate", &rate.to_string(), "--report", s(&report)])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        format!("ready {n}"),
        "the simulation did not start"
    );
    let child = KillOnDrop(child);
    let ids: Vec<String> = (0..n).map(|i| format!("sim-{i:04}")).collect();
    wait_until(
        "every simulated agent online",
        std::time::Duration::from_secs(60),
        || online(m, online_total) >= online_total,
    );
    Sim { child, report, ids }
}

/// Every online device's retained status (up to `n`, within 3 s of quiet), by device id, read through the library's
/// type.
pub fn online_statuses(
    m: &Mosquitto,
    n: usize,
) -> std::collections::BTreeMap<String, outpost::wire::status::OnlineStatus> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &m.port.to_string()])
        .args([
            "-t",
            "outpost/v1/device/+/status",
            "-C",
            &n.to_string(),
            "-W",
            "3",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| outpost::wire::status::DeviceStatus::from_json(l.as_bytes()).ok())
        .filter_map(|s| s.online().cloned())
        .map(|s| (s.device.clone(), s))
        .collect()
}

/// Devices whose retained status says online.
pub fn online(m: &Mosquitto, n: usize) -> usize {
    online_statuses(m, n).len()
}

impl Sim {
    /// Stops the simulation (SIGTERM) and returns each agent's final state, by device id.
    pub fn stop(mut self) -> std::collections::BTreeMap<String, serde_json::Value> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.0.wait().unwrap();
        assert!(status.success(), "simulate exited with {status}");
        std::fs::read_to_string(&self.report)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["device"].as_str().unwrap().to_string(), v)
            })
            .collect()
    }
}

/// A tmpfs mounted on a directory for one test, unmounted when the test ends (after the daemon on it is dropped:
/// declare it first).
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    /// Fails with a sentence where it cannot mount (not root): the tests that need a real full disk do not pass
    /// on a fake.
    pub fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let opts = format!("size={size}");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs", s(dir)])
            .status()
            .unwrap();
        assert!(
            st.success(),
            "cannot mount a {size} tmpfs on {} ({st}): the full-disk tests need a real small filesystem, which \
             mounting takes root for (CI runs as root; run scripts/test.sh as root)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }

    pub fn resize(&self, size: &str) {
        let opts = format!("remount,size={size}");
        let st = std::process::Command::new("mount")
            .args(["-o", &opts, s(&self.0)])
            .status()
            .unwrap();
        assert!(st.success(), "mount -o {opts}: {st}");
    }

    /// Another process's file, `name` in the tmpfs, written until the filesystem refuses a single byte more
    /// (ENOSPC): the disk filled to the last byte, as a journal or a camera's recordings fill a device's. Deleting
    /// the file frees the space again.
    pub fn fill_with(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.0.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let block = vec![0xA5u8; 1 << 20];
        for size in [1 << 20, 4096, 1] {
            loop {
                match f.write(&block[..size]) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        let st = nix::sys::statvfs::statvfs(&self.0).unwrap();
        assert_eq!(st.blocks_available(), 0, "the filesystem is full");
        path
    }

    /// Shrinks the tmpfs to the pages it holds now: nothing more can be allocated in it.
    pub fn fill(&self) {
        let st = nix::sys::statvfs::statvfs(&self.0).unwrap();
        #[allow(clippy::unnecessary_cast)]
        let used = (st.blocks() - st.blocks_free()) as u64 * st.fragment_size() as u64;
        self.resize(&format!("{}k", used.div_ceil(1024)));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", s(&self.0)])
            .status();
    }
}

/// Whether the calling test should run its body here: in the child process that [`alone`] starts for it. The
/// integration tests share one process, so a test that changes process-wide state (the engine's thread setting)
/// runs in a process of its own: called from the test with its full name, this starts the test binary again with
/// only that test and an environment mark, waits for it, asserts it passed, and returns false; in the child it
/// returns true.
pub fn alone(test: &str) -> bool {
    const MARK: &str = "OUTPOST_IT_ALONE";
    if std::env::var(MARK).as_deref() == Ok(test) {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads", "1", "--nocapture"])
        .env(MARK, test)
        .output()
        .expect("start the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in its own process: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// Starts a helper process (an `outpostctl` cloud worker or bundle server) and returns once its log says `ready`
/// (it says so when the broker has acknowledged its subscriptions); its log goes on to the test's stderr.
pub fn spawn_ready(mut cmd: Command, ready: &str) -> KillOnDrop {
    use std::io::BufRead;
    let mut child = cmd
        .env("RUST_LOG", "warn,outpost=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the helper");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let phrase = ready.to_string();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            if line.contains(&phrase) {
                if let Some(t) = tx.take() {
                    let _ = t.send(());
                }
            }
        }
    });
    let helper = KillOnDrop(child);
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("the helper did not say {ready:?} within 30 s"));
    helper
}
