//! The `msclip` binary: answers, and bad input that ends with a message and exit status 1
//! instead of a panic.

use std::process::{Command, Output};

fn msclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msclip")).args(args).output().expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn params_prints_the_reference_counts() {
    let out = msclip(&["params", "--preset", "msclip-s-b32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for n in ["132408001", "77932800", "8954304", "45520896"] {
        assert!(text.contains(n), "missing {n} in:\n{text}");
    }
}

#[test]
fn unknown_preset_is_an_error_listing_the_presets() {
    for args in
        [&["params", "--preset", "vit-h14"][..], &["train", "--preset", "vit-h14", "--output", "/tmp/msclip-cli-none"]]
    {
        let out = msclip(args);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("unknown preset \"vit-h14\"") && err.contains("msclip-s-b32"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn unavailable_device_and_data_are_errors() {
    let out = msclip(&["train", "--device", "cuda"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cuda"), "{}", stderr(&out));
    let out = msclip(&["train", "--data", "laion.tsv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("laion.tsv"));
}

#[test]
fn eval_of_a_missing_run_names_the_path() {
    let out = msclip(&["eval", "--run", "/tmp/msclip-no-such-run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("/tmp/msclip-no-such-run/config.json") && !err.contains("panicked"), "{err}");
}

#[test]
fn data_preview_writes_a_png() {
    let path = std::env::temp_dir().join(format!("msclip-preview-{}.png", std::process::id()));
    let out = msclip(&["data", "preview", "--out", path.to_str().unwrap(), "--count", "4", "--image-size", "32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let _ = std::fs::remove_file(&path);
}
