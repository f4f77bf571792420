//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

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

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
