//! Rollouts per model (issue 18, item 4): on devices that serve two models under traffic, two rollouts run at once:
//! the rollout of a bad release of the second model halts on that model's own figures and abandons that release (a
//! version number the default model uses as well), while the rollout of the default model completes. Neither
//! touches the other model. A device fetches one bundle at a time: the second model's offer waits its turn (a
//! durable queue) instead of replacing the first download.

use crate::common;

use crate::common::{s, wait_exit, wait_until, Daemon, Fixture, Mosquitto};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DEVICES: usize = 3;

#[test]
fn halting_one_models_rollout_leaves_the_other_model_and_its_rollout_untouched() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let f = Fixture::new();
    let config = f.path("outpost.toml");
    // No cache (every request runs the models, so shadow and probation see traffic); short trials.
    std::fs::write(
        &config,
        "[cache]\nenabled = false\n\n[probation]\nrequests = 30\nseconds = 3600\nmin_samples = 10\nlatency_slack_ms = 50.0\n",
    )
    .unwrap();
    let digits_v1 = f.named_bundle("d1.bundle", "edge-fp32", "digits", 1);
    let mut daemons = Vec::new();
    for i in 0..DEVICES {
        let id = format!("two-{i}");
        let state = f.path(&id);
        let mut args = f.fleet_args(&url, &id);
        args.extend(["--group", "two", "--config", s(&config)]);
        f.install_committed(&state, &digits_v1, "digits");
        daemons.push(Daemon::start(&state, &args));
    }
    for d in &daemons {
        wait_until("digits serves", Duration::from_secs(20), || {
            d.get_json("/v1/status")["models"]["digits"]["model"]["version"] == 1
        });
    }

    // Steady traffic to both models of every device; every answer must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let images: Vec<Vec<u8>> = common::test_images()
        .iter()
        .take(300)
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();
    let clients: Vec<_> = daemons
        .iter()
        .map(|d| {
            let urls = [d.url("/v1/infer"), d.url("/v1/models/digits/infer")];
            let (stop, failed, images) = (stop.clone(), failed.clone(), images.clone());
            std::thread::spawn(move || {
                let agent = common::http();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    for u in &urls {
                        let r = agent
                            .post(u)
                            .header("content-type", "image/png")
                            .send(&images[i % images.len()][..]);
                        if !matches!(r, Ok(ref r) if r.status() == 200) {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    // A bad release of digits (its confidence collapses), then a good release of the default model.
    let good = f.bundle_with_spec("e2.bundle", "edge-fp32", "edge-fp32", 2, &[&f.key1], &[]);
    let bad = f.named_bundle("d2.bundle", "edge-flat", "digits", 2);
    // Both at once: the halted rollout abandons digits version 2 only, and the default model's version 2 goes
    // through beside it.
    let mut bad_run = common::rollout(&url, &f, &f.path("rollout-digits"), "two", &bad, &[]);
    let mut good_run = common::rollout(&url, &f, &f.path("rollout-edge"), "two", &good, &[]);
    let bad_st = wait_exit(&mut bad_run, Duration::from_secs(180));
    let good_st = wait_exit(&mut good_run, Duration::from_secs(180));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        bad_st.code(),
        Some(3),
        "the digits rollout halts (exit 3): {bad_st}"
    );
    assert!(
        good_st.success(),
        "the default model's rollout completes: {good_st}"
    );
    for d in &daemons {
        wait_until("the abandon lands", Duration::from_secs(20), || {
            let st = d.get_json("/v1/status");
            st["models"]["digits"]["model"]["version"] == 1
                && st["models"]["digits"]["candidate"].is_null()
        });
        let st = d.get_json("/v1/status");
        assert_eq!(st["model"]["name"], "edge-int8", "{st}");
        assert_eq!(
            st["model"]["version"], 2,
            "the default model's rollout reached it: {st}"
        );
        assert_eq!(
            st["models"]["digits"]["model"]["version"], 1,
            "digits kept v1: {st}"
        );
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the rollouts"
    );
    for d in daemons {
        assert!(d.stop().success());
    }
}
