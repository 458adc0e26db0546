//! Puts the OpenAI CLIP BPE merges into `$OUT_DIR/clip_merges.txt` for `src/text/clip.rs` to
//! embed.
//!
//! The file `bpe_simple_vocab_16e6.txt` ships inside the crates.io package
//! `instant-clip-tokenizer` (MIT), which is a build-dependency for exactly this reason: cargo
//! fetches and verifies it like any other package, so the merges come from the registry through
//! our own build and nothing is downloaded at run time. Cargo gives a build script no path to a
//! dependency's sources, so we ask `cargo metadata` (the same cargo, through `$CARGO`, locked to
//! the build's resolution) where that package's manifest lives; this also follows vendoring and
//! source replacement. The header line is dropped and only the first 48,894 merges are kept,
//! the ones CLIP's 49,408-token vocabulary uses; the rest of the 262,144 would bloat the binary.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGE: &str = "instant-clip-tokenizer";
const FILE: &str = "bpe_simple_vocab_16e6.txt";
/// The header line every release of the file starts with (after a stray file name).
const HEADER_END: &str = "#version: 0.2";
/// 49,408 tokens = 2 * 256 byte symbols + this many merges + SOT + EOT.
const MERGES: usize = 48_894;

/// Writes the merges, or stops the build with a message that says what is missing.
pub fn emit() {
    if let Err(e) = write_merges() {
        panic!("cannot prepare the CLIP merges file: {e}");
    }
}

fn write_merges() -> Result<(), String> {
    let source = package_dir()?.join(FILE);
    println!("cargo:rerun-if-changed={}", source.display());
    let text = fs::read_to_string(&source).map_err(|e| format!("{}: {e}", source.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if !header.ends_with(HEADER_END) {
        return Err(format!("{}: header {header:?} does not end with {HEADER_END:?}", source.display()));
    }
    let merges: Vec<&str> = lines.take(MERGES).collect();
    if merges.len() != MERGES {
        return Err(format!("{}: {} merges, CLIP needs {MERGES}", source.display(), merges.len()));
    }
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?).join("clip_merges.txt");
    fs::write(&out, merges.join("\n")).map_err(|e| format!("{}: {e}", out.display()))
}

/// The source directory of the `instant-clip-tokenizer` package in this build's dependency graph.
fn package_dir() -> Result<PathBuf, String> {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?;
    let manifest = Path::new(&manifest_dir).join("Cargo.toml");
    // A change of the dependency's version shows up in the lock file.
    println!("cargo:rerun-if-changed={}", Path::new(&manifest_dir).join("Cargo.lock").display());
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = env::var("TARGET").map_err(|e| format!("TARGET: {e}"))?;
    // Locked: the build's own resolution, never a new one. Filtered to the target: metadata
    // reads the manifest of every package it lists, and so fetches any the build has not
    // (another platform's, unfiltered; at most a dev-dependency, filtered).
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--filter-platform", &target, "--manifest-path"])
        .arg(&manifest)
        .output()
        .map_err(|e| format!("running {cargo} metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!("{cargo} metadata failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata output: {e}"))?;
    let manifests: Vec<&str> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == PACKAGE)
        .filter_map(|p| p["manifest_path"].as_str())
        .collect();
    match manifests.as_slice() {
        [one] => Path::new(one).parent().map(Path::to_path_buf).ok_or_else(|| format!("manifest path {one}")),
        found => Err(format!("expected one {PACKAGE} package in the dependency graph, found {}", found.len())),
    }
}
