//! VSI-Bench: `eval score` equals upstream's scoring on the fixture (outputs scored by upstream's
//! own code), and `eval run` over a tiny dataset in the hub's layout gives the same results
//! unsharded, in two merged shards, and killed halfway then continued.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::viewer;

use common::text;

fn tmp(name: &str) -> common::ScratchDir {
    common::tmp_dir("eval", name)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vsibench-scoring").join(p)
}

/// Numbers within `tol`, everything else equal, recursively.
fn assert_close(a: &Value, b: &Value, tol: f64, path: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= tol, "{path}: {x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{path}: keys differ");
            for (k, v) in x {
                assert_close(v, &y[k], tol, &format!("{path}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: lengths differ");
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                assert_close(u, v, tol, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

#[test]
fn score_equals_upstream_on_the_fixture() {
    let dir = tmp("score");
    let out = viewer(&["eval", "score", fixture("in/results.json").to_str().unwrap(), "--out", dir.join("scored").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let got = read_json(&dir.join("scored/results.json"));
    let want = read_json(&fixture("expected/results.json"));
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for key in ["sample", "model_output", "cleaned_model_output", "cleaned_gt_answer", "correct"] {
            assert_eq!(g[key], w[key], "entry {i}: {key}");
        }
        // Rewards are multiples of 0.1 in float32: within 1e-6 means the same threshold decisions.
        assert_close(&g["reward"], &w["reward"], 1e-6, &format!("entry {i}: reward"));
    }
    assert_close(&read_json(&dir.join("scored/metrics.json")), &read_json(&fixture("expected/metrics.json")), 1e-6, "metrics");
}

#[test]
fn score_rejects_what_is_not_results() {
    let dir = tmp("score-bad");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"[{"sample": {"question_type": "object_colour", "ground_truth": "a"}, "model_output": "a"}]"#).unwrap();
    let out = viewer(&["eval", "score", bad.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("bad.json: entry 0") && text(&out).contains("object_colour"), "{}", text(&out));
    std::fs::write(&bad, r#"{"not": "a list"}"#).unwrap();
    let out = viewer(&["eval", "score", bad.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()]);
    assert!(text(&out).contains("expected a list of results"), "{}", text(&out));
}

/// Two scenes (a video each) and ten questions of every kind, in the hub's layout.
fn tiny_vsibench(dir: &Path) -> PathBuf {
    let py = common::python_venv("vsibench-venv", &["pyarrow==22.0.0"]);
    let data = dir.join("VSI-Bench");
    for (dataset, scene, pattern) in [("arkitscenes", "41069025", "testsrc2"), ("scannet", "scene0011_00", "smptebars")] {
        std::fs::create_dir_all(data.join(dataset)).unwrap();
        let clip = data.join(dataset).join(format!("{scene}.mp4"));
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", &format!("{pattern}=size=160x120:rate=10"), "-frames:v", "30", "-c:v", "libx264", "-pix_fmt", "yuv420p"])
            .arg(&clip)
            .output()
            .expect("ffmpeg");
        assert!(o.status.success(), "{}", text(&o));
    }
    let mc = |id: i64, ds: &str, scene: &str, t: &str, gt: &str| serde_json::json!({"id": id, "dataset": ds, "scene_name": scene, "question_type": t, "question": format!("Question {id} about the {t}?"), "options": ["A. left", "B. right", "C. back", "D. front"], "ground_truth": gt});
    let na = |id: i64, ds: &str, scene: &str, t: &str, gt: &str| serde_json::json!({"id": id, "dataset": ds, "scene_name": scene, "question_type": t, "question": format!("How big is thing {id}?"), "options": null, "ground_truth": gt});
    let rows = serde_json::json!([
        mc(0, "arkitscenes", "41069025", "object_rel_direction_easy", "A"),
        na(1, "arkitscenes", "41069025", "object_counting", "3"),
        mc(2, "arkitscenes", "41069025", "route_planning", "B"),
        na(3, "arkitscenes", "41069025", "room_size_estimation", "12.5"),
        mc(4, "scannet", "scene0011_00", "object_rel_direction_hard", "C"),
        na(5, "scannet", "scene0011_00", "object_abs_distance", "1.7"),
        mc(6, "scannet", "scene0011_00", "obj_appearance_order", "D"),
        na(7, "scannet", "scene0011_00", "object_size_estimation", "45"),
        mc(8, "scannet", "scene0011_00", "object_rel_distance", "A"),
        mc(9, "arkitscenes", "41069025", "object_rel_direction_medium", "B"),
    ]);
    let rows_path = dir.join("rows.json");
    std::fs::write(&rows_path, rows.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/make_vsibench.py");
    let o = Command::new(&py).arg(&script).arg(&rows_path).arg(&data).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    data
}

fn run_args<'a>(data: &'a str, weights: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["eval", "run", "--dataset", data, "--weights", weights, "--frames", "4", "--max-new-tokens", "3", "--out", out];
    v.extend_from_slice(extra);
    v
}

/// What must be identical between runs: everything but the timings and speeds.
fn comparable(results: &Value) -> Value {
    let mut r = results.clone();
    for e in r.as_array_mut().unwrap() {
        let o = e.as_object_mut().unwrap();
        o.remove("timings");
        o.remove("summary");
    }
    r
}

#[test]
fn runs_unsharded_sharded_and_resumed_agree() {
    let dir = tmp("run");
    let data = tiny_vsibench(&dir);
    let weights = common::mllm_weights(&dir);
    let (d, w) = (data.to_str().unwrap().to_string(), weights.to_str().unwrap().to_string());
    let out = |name: &str| dir.join(name).to_str().unwrap().to_string();

    let (full, s0, s1, merged, killed) = (out("full"), out("shard0"), out("shard1"), out("merged"), out("killed"));
    let o = viewer(&run_args(&d, &w, &full, &[]));
    assert!(o.status.success(), "{}", text(&o));
    let results = read_json(&dir.join("full/results.json"));
    let list = results.as_array().unwrap();
    assert_eq!(list.len(), 10);
    // Upstream's prompt, frames and fields.
    assert!(list[0]["prompt"].as_str().unwrap().contains("Question 0 about the object_rel_direction_easy?\nOptions:\nA. left\nB. right\nC. back\nD. front\nAnswer with the option's letter from the given choices directly.<|im_end|>"), "{}", list[0]["prompt"]);
    assert!(list[1]["prompt"].as_str().unwrap().contains("How big is thing 1?\nPlease answer the question using a single word or phrase."));
    assert_eq!(list[0]["frames_used"], serde_json::json!([0, 10, 19, 29]));
    for (i, r) in list.iter().enumerate() {
        assert_eq!(r["row"], i);
        for key in ["sample", "model_output", "cleaned_model_output", "cleaned_gt_answer", "reward", "correct", "timings"] {
            assert!(r.get(key).is_some(), "result {i} has no {key}");
        }
    }
    let metrics = read_json(&dir.join("full/metrics.json"));
    assert_eq!(metrics["per_question_type"].as_object().unwrap().len(), 10);

    for (shard, o_dir) in [("0/2", &s0), ("1/2", &s1)] {
        let o = viewer(&run_args(&d, &w, o_dir, &["--shard", shard]));
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(read_json(&dir.join("shard0/results.json")).as_array().unwrap().len(), 5);
    let o = viewer(&["eval", "merge", &s0, &s1, "--out", &merged]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(comparable(&read_json(&dir.join("merged/results.json"))), comparable(&results));
    assert_eq!(read_json(&dir.join("merged/metrics.json")), metrics);

    // kill -9 once some questions are journalled, then continue.
    let mut child = Command::new(env!("CARGO_BIN_EXE_spatial-viewer")).args(run_args(&d, &w, &killed, &[])).stderr(std::process::Stdio::null()).spawn().unwrap();
    let journal = dir.join("killed/results.jsonl");
    let t = std::time::Instant::now();
    while std::fs::read_to_string(&journal).map(|s| s.lines().count()).unwrap_or(0) < 4 {
        assert!(t.elapsed().as_secs() < 300, "the run journalled nothing");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = std::fs::read_to_string(&journal).unwrap().lines().count();
    assert!(before < 10, "the run finished before it could be killed");
    let o = viewer(&run_args(&d, &w, &killed, &[]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("({before} from before)")) || before == 10, "{}", text(&o));
    assert_eq!(comparable(&read_json(&dir.join("killed/results.json"))), comparable(&results));
    assert_eq!(read_json(&dir.join("killed/metrics.json")), metrics);

    // A rerun into the same folder with other settings is refused; so is merging other runs.
    let o = viewer(&run_args(&d, &w, &full, &["--base-model"]));
    assert!(!o.status.success() && text(&o).contains("other settings"), "{}", text(&o));
    // So is one in another precision: its answers would not be the run's.
    let o = viewer(&run_args(&d, &w, &full, &["--dtype", "bf16-products"]));
    assert!(!o.status.success() && text(&o).contains("other settings") && text(&o).contains("bf16 products"), "{}", text(&o));
    let other = out("other");
    let o = viewer(&run_args(&d, &w, &other, &["--limit", "2"]));
    assert!(o.status.success(), "{}", text(&o));
    let o = viewer(&["eval", "merge", &s0, &other, "--out", &out("bad-merge")]);
    assert!(!o.status.success() && text(&o).contains("not shards of one run"), "{}", text(&o));

    // The debiased configuration from the dataset card (a zstd parquet): the even ids.
    let o = viewer(&run_args(&d, &w, &out("debiased"), &["--config", "debiased", "--question-types", "object_counting,route_planning"]));
    assert!(o.status.success(), "{}", text(&o));
    let ids: Vec<u64> = read_json(&dir.join("debiased/results.json")).as_array().unwrap().iter().map(|r| r["sample"]["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![2]);
    // Space-aware: VGGT once per video on uniform candidates (cached), the picks among them.
    let vggt = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/vggt-tiny");
    let sa = out("space-aware");
    let o = Command::new(env!("CARGO_BIN_EXE_spatial-viewer"))
        .args(run_args(&d, &w, &sa, &["--sampling", "space-aware", "--vggt", vggt.to_str().unwrap(), "--candidates", "8", "--limit", "6"]))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let sa = read_json(&dir.join("space-aware/results.json"));
    // Upstream's candidates: numpy.linspace(0, 29, 8) cast to int (truncated).
    let candidates: Vec<usize> = (0..8).map(|i| (i as f64 * 29.0 / 7.0) as usize).collect();
    let mut per_video: std::collections::HashMap<String, Value> = Default::default();
    for r in sa.as_array().unwrap() {
        let frames: Vec<usize> = r["frames_used"].as_array().unwrap().iter().map(|f| f.as_u64().unwrap() as usize).collect();
        assert!(!frames.is_empty() && frames.len() <= 4 && frames.iter().all(|f| candidates.contains(f)), "{frames:?}");
        let prev = per_video.entry(r["video"].as_str().unwrap().to_string()).or_insert_with(|| r["frames_used"].clone());
        assert_eq!(*prev, r["frames_used"], "one set of picks per video");
    }
    assert_eq!(per_video.len(), 2);
    assert_eq!(std::fs::read_dir(dir.join("cache/spatial-viewer/reconstructions")).unwrap().count(), 2, "one reconstruction per video, cached");

    let o = viewer(&run_args(&d, &w, &out("nope"), &["--config", "pruned"]));
    assert!(!o.status.success() && text(&o).contains("no configuration 'pruned'"), "{}", text(&o));
}

/// The Ray launcher runs two shards as Ray tasks on a local Ray instance and merges them into the
/// same results as one run.
#[test]
fn the_ray_launcher_runs_shards_as_tasks() {
    let dir = tmp("ray");
    let data = tiny_vsibench(&dir);
    let weights = common::mllm_weights(&dir);
    let (d, w) = (data.to_str().unwrap(), weights.to_str().unwrap());
    let single = dir.join("single");
    let o = viewer(&run_args(d, w, single.to_str().unwrap(), &["--limit", "4"]));
    assert!(o.status.success(), "{}", text(&o));
    let py = common::python_venv("ray-venv", &["ray==2.60.0"]);
    let launcher = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/vsibench_ray.py");
    let o = Command::new(&py)
        .arg(&launcher)
        .args(["--shards", "2", "--gpus-per-shard", "0", "--binary", env!("CARGO_BIN_EXE_spatial-viewer"), "--out"])
        .arg(dir.join("ray"))
        .args(["--", "--dataset", d, "--weights", w, "--frames", "4", "--max-new-tokens", "3", "--limit", "4"])
        // A private local instance, not whatever cluster the machine may know.
        .env_remove("RAY_ADDRESS")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for i in 0..2 {
        assert_eq!(read_json(&dir.join(format!("ray/shard-{i}-of-2/results.json"))).as_array().unwrap().len(), 2);
    }
    assert_eq!(comparable(&read_json(&dir.join("ray/results.json"))), comparable(&read_json(&single.join("results.json"))));
    assert_eq!(read_json(&dir.join("ray/metrics.json")), read_json(&single.join("metrics.json")));
}
