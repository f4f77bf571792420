//! `engine.threads`: which plans use tract's multithreaded executor. The executor setting is process-wide and the
//! other engine tests must not see it change, so the test runs in a process of its own ([`common::alone`]).

use crate::common;

use outpost::inference::{self, Engine, ModelSpec};

fn load(stem: &str) -> (Vec<u8>, ModelSpec) {
    let path = common::models().join(format!("{stem}.onnx"));
    let spec = ModelSpec::from_file(&ModelSpec::default_path_for(&path)).unwrap();
    (std::fs::read(&path).unwrap(), spec)
}

#[test]
fn only_slow_plans_split_their_products_and_they_answer_the_same() {
    if !common::alone(
        "engine_threads::only_slow_plans_split_their_products_and_they_answer_the_same",
    ) {
        return;
    }
    let (bytes, spec) = load("mobilenetv2-fp32");
    let (_, inputs) = common::Golden::load("mobilenetv2-fp32");
    let single = Engine::load(&bytes, spec.clone()).unwrap();
    assert!(!single.parallel(), "no executor is set by default");
    let want = single.run(&inputs[0]).unwrap();

    inference::set_threads(2);
    let parallel = Engine::load(&bytes, spec.clone()).unwrap();
    assert!(
        parallel.parallel(),
        "a MobileNetV2 run (tens of ms) uses the executor"
    );
    assert!(
        parallel.load_time() > std::time::Duration::ZERO,
        "the thread setting is part of the plan key: a new plan, not the single-thread one"
    );
    let got = parallel.run(&inputs[0]).unwrap();
    let worst = common::max_abs_diff(&want, &got);
    assert!(worst < 1e-4, "2 threads differ by {worst}");

    // The edge model's run (~0.1 ms) stays on the calling thread. A single run can be stretched past the 2 ms
    // threshold by the scheduler on a loaded machine, so one of three fresh loads must decide so.
    let (edge, edge_spec) = load("edge-fp32");
    let small = (0..3).any(|_| !Engine::load(&edge, edge_spec.clone()).unwrap().parallel());
    assert!(small, "the edge model must not split its products");
    inference::set_threads(1);
    assert!(!Engine::load(&bytes, spec).unwrap().parallel());
}
