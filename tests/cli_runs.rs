//! Misuse probes of `msclip train` and `msclip eval` (issue 11): each once lost or misplaced
//! data; now each is refused before anything is written, or handled without loss.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn msclip_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msclip")).current_dir(dir).args(args).output().expect("the binary runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msclip-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

const FAST: &[&str] = &["--steps", "2", "--batch-size", "4", "--eval-samples", "4"];

#[test]
fn bad_names_and_flags_are_refused_by_name_before_anything_is_written() {
    let dir = scratch("flags");
    let probes: &[(&[&str], &str)] = &[
        (&["--name", ".."], "--name \"..\""),
        (&["--name", "."], "--name \".\""),
        (&["--name", "a\tb"], "control character"),
        (&["--name", "a/b"], "separator"),
        (&["--lr", "inf"], "--lr"),
        (&["--lr", "nan"], "--lr"),
        (&["--wd", "nan"], "--wd"),
        (&["--wd=-5"], "--wd"),
        (&["--wd-shared", "inf"], "--wd-shared"),
        (&["--grad-clip", "nan"], "--grad-clip"),
        (&["--grad-clip", "-1"], "--grad-clip"),
        (&["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr"),
        (&["--steps", "18446744073709551615"], "overflows"),
        (&["--epochs", "18446744073709551615"], "overflows"),
        (&["--epochs", "0"], "--epochs"),
        (&["--batch-size", "1"], "--batch-size"),
        (&["--log-every", "0"], "--log-every"),
        (&["--batch-size", "100000000"], "the largest that fits is about"),
        (&["--eval-samples", "100000000"], "the largest that fits is about"),
        (&["--preset", "vit-h14"], "unknown preset"),
        (&["--clip-tokenizer"], "embeds only 1024"),
    ];
    for (args, fragment) in probes {
        let out = msclip_in(&dir, &[&["train"], *args].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(fragment) && !err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(entries(&dir).is_empty(), "nothing written: {:?}", entries(&dir));
    // A learning rate below the old fixed floor of 1e-5 now trains: the floor follows --lr.
    let out = msclip_in(&dir, &["train", "--lr", "1e-6", "--eval-samples", "0", "--steps", "2", "--batch-size", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("evaluation is off"));
    assert!(!dir.join("runs/tiny/results.jsonl").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_output_never_destroys_a_neighbour_or_leaves_a_temporary() {
    let dir = scratch("eval");
    let out = msclip_in(&dir, &[&["train", "--name", "r"], FAST].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(dir.join("notes.tmp"), "mine").unwrap();
    let out = msclip_in(&dir, &["eval", "--run", "runs/r", "--samples", "4", "--output", "notes.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(dir.join("notes.tmp")).unwrap(), "mine");
    std::fs::create_dir(dir.join("outdir")).unwrap();
    let out = msclip_in(&dir, &["eval", "--run", "runs/r", "--samples", "4", "--output", "outdir"]);
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));
    for samples in ["0", "100000000"] {
        let out = msclip_in(&dir, &["eval", "--run", "runs/r", "--samples", samples]);
        assert!(stderr(&out).contains("--samples"), "{}", stderr(&out));
    }
    assert_eq!(entries(&dir), ["notes.json", "notes.tmp", "outdir", "runs"]);
    let _ = std::fs::remove_dir_all(&dir);
}

// Item 5: the shapes world is rendered at the preset's image size, so a B/32 preset trains.
#[test]
fn a_vit_b32_preset_trains_a_step_on_the_cpu() {
    let dir = scratch("b32");
    let args = ["train", "--preset", "clip-b32", "--steps", "1", "--batch-size", "2", "--eval-samples", "0"];
    let out = msclip_in(&dir, &[&args[..], &["--keep-checkpoints", "0"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let config = std::fs::read_to_string(dir.join("runs/clip-b32/config.json")).unwrap();
    assert!(config.contains("\"image_size\": 224"), "{config}");
    let _ = std::fs::remove_dir_all(&dir);
}

// Item 8: Ctrl-C finishes the step, writes a checkpoint and says how to resume; the run then
// resumes from it.
#[test]
fn sigint_saves_a_checkpoint_and_exits_non_zero_with_the_resume_command() {
    let dir = scratch("sigint");
    let mut child = Command::new(env!("CARGO_BIN_EXE_msclip"))
        .current_dir(&dir)
        .args(["train", "--steps", "400", "--batch-size", "4", "--log-every", "1", "--save-every", "1000"])
        .args(["--eval-samples", "4", "--name", "r"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("Train Step"))).expect("a step line").unwrap();
    assert!(first.contains("Train Step: 1 "), "{first}");
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}\n{rest:?}");
    assert!(err.contains("checkpoint saved") && err.contains("--resume latest"), "{err}");
    let ckpt = dir.join("runs/r/checkpoints/latest.safetensors");
    assert!(ckpt.exists(), "{err}");
    let resumed = msclip_in(&dir, &["train", "--resume", "latest", "--name", "r", "--steps", "4"]);
    let text = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(text.contains("resuming runs/r at step") && text.contains("done: 4 steps"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

// Issue 15: a single tower trained with OneR's contrasts; its evaluation reports the
// modality gap and the pointing game, and draws the localisation heatmaps.
#[test]
fn a_one_tower_run_with_xmc_evaluates_its_gap_and_localisation() {
    let dir = scratch("oner");
    let args = [
        ["train", "--preset", "tiny-oner", "--name", "o", "--loss", "itc=1,xmc=0.5,cmc=1,cic=0.5"].as_slice(),
        &["--type-embedding", "--momentum-targets", "0.9"],
    ]
    .concat();
    let out = msclip_in(&dir, &[&args[..], FAST].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let config = std::fs::read_to_string(dir.join("runs/o/config.json")).unwrap();
    assert!(config.contains("\"momentum_targets\": 0.9"), "{config}");
    let settings =
        ["\"xmc\": 0.5", "\"cmc\": 1.0", "\"cic\": 0.5", "\"encoder\": \"bidirectional\"", "\"type_embedding\": true"];
    for setting in settings {
        assert!(config.contains(setting), "{setting} missing from {config}");
    }
    // Every step logs each objective's value beside the weighted loss.
    let losses = std::fs::read_to_string(dir.join("runs/o/train_loss.jsonl")).unwrap();
    let first = losses.lines().next().unwrap();
    for key in ["\"loss\"", "\"loss_itc\"", "\"loss_xmc\"", "\"loss_cmc\"", "\"loss_cic\""] {
        assert!(first.contains(key), "{key} missing from {first}");
    }
    let eval = ["eval", "--run", "runs/o", "--samples", "4", "--output", "e.json", "--heatmaps", "h.png"];
    let out = msclip_in(&dir, &eval);
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = std::fs::read_to_string(dir.join("e.json")).unwrap();
    for key in
        ["localisation/pointing_game", "localisation/pointing_game_chance", "modality_gap/seen/centroid_distance"]
    {
        assert!(metrics.contains(key), "{key} missing from {metrics}");
    }
    assert!(std::fs::read(dir.join("h.png")).unwrap().starts_with(b"\x89PNG"), "a PNG sheet");
    for bad in ["runs", "missing/h.png"] {
        let out =
            msclip_in(&dir, &["eval", "--run", "runs/o", "--samples", "4", "--output", "e.json", "--heatmaps", bad]);
        assert!(!out.status.success() && stderr(&out).contains("--heatmaps"), "{bad}: {}", stderr(&out));
    }
    // The step bench times the same objectives.
    let bench = ["bench", "step", "--preset", "tiny-oner", "--batch", "4", "--steps", "1", "--warmup", "1"];
    let out = msclip_in(&dir, &[&bench[..], &["--loss", "itc,cmc=0.5", "--json", "b.json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let bench = std::fs::read_to_string(dir.join("b.json")).unwrap();
    assert!(bench.contains("\"cmc\": 0.5"), "{bench}");
    // An objective that does not exist is refused before anything runs.
    let out = msclip_in(&dir, &["train", "--preset", "tiny-oner", "--name", "bad", "--loss", "itc=1,mmm=1"]);
    assert!(!out.status.success() && stderr(&out).contains("unknown objective \"mmm\""), "{}", stderr(&out));
    // So are momentum targets without a mixture to make.
    let out = msclip_in(
        &dir,
        &["train", "--preset", "tiny-oner", "--name", "bad", "--momentum-targets", "0.9", "--loss", "itc"],
    );
    assert!(!out.status.success() && stderr(&out).contains("--momentum-targets"), "{}", stderr(&out));
    // So is one the preset cannot compute: CIC's joint sequence on two towers.
    let out = msclip_in(&dir, &["train", "--preset", "tiny", "--name", "bad", "--loss", "cic"]);
    assert!(!out.status.success() && stderr(&out).contains("single-tower preset"), "{}", stderr(&out));
    assert!(!dir.join("runs/bad").exists(), "no run directory for a refused run");
    let _ = std::fs::remove_dir_all(&dir);
}

// Issue 15: OneR's masked objectives train beside the contrast, log their values, build their
// heads into the saved model config, and a resumed run masks as the uninterrupted run did (the
// masks are a function of the seed and step), to the last bit of the loss.
#[test]
fn a_run_with_mlm_and_mim_logs_them_and_resumes_exactly() {
    let dir = scratch("masked");
    let train = |name: &str, steps: &str| {
        let args = ["train", "--preset", "tiny-oner", "--name", name, "--loss", "itc,xmc,mlm=0.5,mim"];
        let settings = ["--mlm-copies", "1", "--mim-ratio", "0.5", "--batch-size", "4", "--eval-samples", "4"];
        msclip_in(&dir, &[&args[..], &settings, &["--steps", steps, "--save-every", "2"]].concat())
    };
    let whole = train("whole", "4");
    assert!(whole.status.success(), "{}", stderr(&whole));
    let config = std::fs::read_to_string(dir.join("runs/whole/config.json")).unwrap();
    for setting in ["\"mlm_head\": true", "\"mim_head\": true", "\"mlm_copies\": 1", "\"mim_ratio\": 0.5"] {
        assert!(config.contains(setting), "{setting} missing from {config}");
    }
    let log = |name: &str| std::fs::read_to_string(dir.join(format!("runs/{name}/train_loss.jsonl"))).unwrap();
    let whole_log = log("whole");
    assert!(whole_log.lines().all(|l| l.contains("\"loss_mlm\"") && l.contains("\"loss_mim\"")), "{whole_log}");
    let cut = train("cut", "2");
    assert!(cut.status.success(), "{}", stderr(&cut));
    let resumed = msclip_in(&dir, &["train", "--resume", "latest", "--name", "cut", "--steps", "4"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let loss_of_step_4 = |text: &str| {
        let line = text.lines().find(|l| l.contains("\"step\":4")).unwrap().to_string();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["loss"].as_f64().unwrap()
    };
    assert_eq!(loss_of_step_4(&log("cut")), loss_of_step_4(&whole_log));
    // A masked objective the preset cannot run is refused before anything is written.
    let out = msclip_in(&dir, &["train", "--preset", "tiny", "--name", "bad", "--loss", "itc,mlm"]);
    assert!(!out.status.success() && stderr(&out).contains("bidirectional"), "{}", stderr(&out));
    let out = msclip_in(&dir, &["train", "--preset", "tiny", "--name", "bad", "--loss", "itc,mim"]);
    assert!(!out.status.success() && stderr(&out).contains("patchify"), "{}", stderr(&out));
    let out = msclip_in(&dir, &["train", "--preset", "tiny-oner", "--name", "bad", "--loss", "mlm"]);
    assert!(!out.status.success() && stderr(&out).contains("contrastive"), "{}", stderr(&out));
    assert!(!dir.join("runs/bad").exists(), "no run directory for a refused run");
    let _ = std::fs::remove_dir_all(&dir);
}

// Issue 15: the ablation command trains each arm on each seed and tabulates mean and spread;
// finished runs are reused, and an earlier report's step counts can be trained again.
#[test]
fn the_ablation_trains_every_arm_on_every_seed_and_tabulates_them() {
    let dir = scratch("ablate");
    let small = ["--seeds", "0,1", "--batch-size", "4", "--eval-samples", "4", "--output", "abl"];
    let args = ["ablate", "--arms", "clip,oner-xmc-cic", "--budget", "0.01", "--timed-steps", "1"];
    let out = msclip_in(&dir, &[&args[..], &small[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    for row in ["| clip | tiny-clip, itc |", "| oner-xmc-cic | tiny-oner, itc,xmc,cic |", "ms per step, 20 steps"] {
        assert!(table.contains(row), "{row} missing from {table}");
    }
    assert!(dir.join("abl/oner-xmc-cic-s1/results.jsonl").exists() && dir.join("abl/ablations.md").exists());
    let report = std::fs::read_to_string(dir.join("abl/ablations.json")).unwrap();
    assert!(report.contains("\"steps\": 20") && report.contains("zeroshot/shape/seen/acc1"), "{report}");
    let again = ["ablate", "--arms", "clip", "--steps-of", "abl/ablations.json"];
    let out = msclip_in(&dir, &[&again[..], &small[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("steps from --steps-of, 20 steps") && said.contains("reusing the finished run"), "{said}");
    let refused: [(&[&str], &str); 3] = [
        (&["--arms", "gpt"], "unknown arm \"gpt\""),
        (&["--budget", "0"], "--budget"),
        (&["--eval-samples", "0"], "--eval-samples must be at least 1"),
    ];
    for (bad, says) in refused {
        let out = msclip_in(&dir, &[&["ablate", "--output", "abl"][..], bad].concat());
        assert!(!out.status.success() && stderr(&out).contains(says), "{bad:?}: {}", stderr(&out));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// Issue 16: a share-nothing run's weights go out as open_clip's state dict and come back in
// through `eval --weights` to the same metrics; a model open_clip cannot hold is refused.
#[test]
fn an_exported_run_evaluates_the_same_from_its_open_clip_file() {
    let dir = scratch("export");
    let out = msclip_in(&dir, &[&["train", "--preset", "tiny-clip", "--name", "c"], FAST].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = msclip_in(&dir, &["export", "--run", "runs/c", "--out", "c.safetensors"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    for want in [
        "open_clip.model.CLIP(**json.loads(",
        "load_state_dict(load_file(\"c.safetensors\"), strict=True)",
        "m.eps = 1e-12",
    ] {
        assert!(printed.contains(want), "expected {want:?} in:\n{printed}");
    }
    let metrics = |args: &[&str]| {
        let out = msclip_in(&dir, &[&["eval", "--run", "runs/c", "--samples", "8"], args].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("e.json")).unwrap()).unwrap();
        record
    };
    let from_checkpoint = metrics(&["--output", "e.json"]);
    let from_file = metrics(&["--output", "e.json", "--weights", "c.safetensors"]);
    assert_eq!(from_file["metrics"], from_checkpoint["metrics"]);
    assert_eq!(from_file["pretrained"], "c.safetensors");
    assert_eq!(from_checkpoint["step"], 2);
    assert!(from_file["step"].is_null());

    let out = msclip_in(&dir, &["export", "--run", "runs/c", "--out", "c16.safetensors", "--dtype", "bf16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::metadata(dir.join("c16.safetensors")).unwrap().len()
            < std::fs::metadata(dir.join("c.safetensors")).unwrap().len()
    );

    let out = msclip_in(&dir, &[&["train", "--name", "m"], FAST].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = msclip_in(&dir, &["export", "--run", "runs/m", "--out", "m.safetensors"]);
    assert!(!out.status.success() && stderr(&out).contains("share weights"), "{}", stderr(&out));
    let out = msclip_in(&dir, &["eval", "--run", "runs/m", "--samples", "4", "--weights", "c.safetensors"]);
    // A shared-weight model reads MS-CLIP's original layout, which the tiny stem does not have.
    assert!(
        !out.status.success() && stderr(&out).contains("has no layout in MS-CLIP's original code"),
        "{}",
        stderr(&out)
    );
    let out = msclip_in(&dir, &["eval", "--run", "runs/c", "--weights", "c.safetensors", "--checkpoint", "x"]);
    assert!(!out.status.success() && stderr(&out).contains("cannot be used with"), "{}", stderr(&out));
    assert!(!dir.join("m.safetensors").exists(), "a refused export writes nothing");
    let _ = std::fs::remove_dir_all(&dir);
}
