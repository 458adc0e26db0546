//! NVTX ranges reach a profiler. A probe tool built from the official NVTX headers
//! (tests/data/nvtx_probe.c) attaches to msclip's loader (src/nvtx/) as Nsight Systems' injection
//! library does, and records the ranges of direct calls and of training steps on the CPU and the
//! emulator: each step, its forward, backward and optimizer, the gradient clipping inside the
//! optimizer, and every backend op. The probe is first run on the headers' own loader, so what
//! it checks of a loader is what the headers' loader provides.
//!
//! The headers come from scripts/install-cuda-toolchain.sh (the nvidia-nvtx wheel); without
//! them these tests fail and say so. A profiler attaches once per process, at the first NVTX
//! call, so each case runs in a child process of this test binary: the `child` test, which does
//! nothing unless `MSCLIP_NVTX_CASE` names a case.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use msclip::Device;
use msclip::model::{ClipModel, preset};
use msclip::nvtx;
use msclip::train::{Precision, RunOptions, Steps, TrainConfig, new_run_tokenizer, train};

/// The case a child process runs.
const CASE_VAR: &str = "MSCLIP_NVTX_CASE";
/// The probe's path, for a child that reads what the probe recorded.
const PROBE_VAR: &str = "MSCLIP_NVTX_PROBE";
/// Where NVTX finds a tool.
const INJECTION_VAR: &str = "NVTX_INJECTION64_PATH";
/// Makes the probe's entry point refuse (return 0).
const REFUSE_VAR: &str = "NVTX_PROBE_REFUSE";

const WARNING: &str = "warning: NVTX ranges are off";

/// The directory holding nvtx3/nvToolsExt.h: the include/ beside the bin/ of `NVCC` (a CUDA
/// install's, or the link scripts/install-cuda-toolchain.sh makes), or the repo-local install.
fn nvtx_include_dir() -> PathBuf {
    let from_nvcc =
        std::env::var_os("NVCC").and_then(|nvcc| Path::new(&nvcc).parent()?.parent().map(|root| root.join("include")));
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cuda-toolchain/include");
    [from_nvcc, Some(local)].into_iter().flatten().find(|dir| dir.join("nvtx3/nvToolsExt.h").is_file()).expect(
        "the official NVTX headers (nvtx3/nvToolsExt.h) are neither beside $NVCC nor in .cuda-toolchain/include: \
         run scripts/install-cuda-toolchain.sh, which installs them (the nvidia-nvtx wheel)",
    )
}

/// A directory of one test's own, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("msclip-nvtx-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles C with the NVTX headers on the include path: `args` name the sources and any
/// options, `out` the result.
fn compile(args: &[&OsStr], out: &Path) {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let output = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(nvtx_include_dir())
        .args(args)
        .arg("-o")
        .arg(out)
        .args(["-lpthread", "-ldl"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(output.status.success(), "compiling {out:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// Builds the probe tool in `dir`.
fn build_probe(dir: &Scratch) -> PathBuf {
    let out = dir.join("libnvtx_probe.so");
    compile(&["-shared".as_ref(), "-fPIC".as_ref(), data("nvtx_probe.c").as_os_str()], &out);
    out
}

/// Runs `case` in a child process with `vars` set (and no NVTX variables of this process's);
/// returns its output once it succeeded.
fn run_case(case: &str, vars: &[(&str, &OsStr)]) -> Output {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE_VAR, case)
        .env_remove(INJECTION_VAR)
        .env_remove(REFUSE_VAR);
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "case {case} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The lines of a child's stderr that warn about NVTX.
fn warnings(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.contains("NVTX")).map(str::to_string).collect()
}

#[test]
fn the_probe_attaches_to_the_headers_own_loader() {
    let dir = Scratch::new("official");
    let probe = build_probe(&dir);
    let program = dir.join("nvtx_official_loader");
    compile(&[data("nvtx_official_loader.c").as_os_str()], &program);
    let output = Command::new(&program).arg(&probe).env(INJECTION_VAR, &probe).env_remove(REFUSE_VAR).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "0 push outer\n0 push inner\n0 pop\n0 pop\n");
}

#[test]
fn a_profiler_sees_every_range_in_order() {
    let dir = Scratch::new("tool");
    let probe = build_probe(&dir);
    let output = run_case("tool", &[(PROBE_VAR, probe.as_os_str()), (INJECTION_VAR, probe.as_os_str())]);
    assert_eq!(warnings(&output), Vec::<String>::new());
}

#[test]
fn without_a_profiler_nothing_attaches() {
    let dir = Scratch::new("no-tool");
    let output = run_case("no_tool", &[(PROBE_VAR, build_probe(&dir).as_os_str())]);
    assert_eq!(warnings(&output), Vec::<String>::new());
}

#[test]
fn a_missing_profiler_library_is_one_warning() {
    let dir = Scratch::new("missing");
    let missing = dir.join("no-such-dir/libnvtx_missing.so");
    let output = run_case("off", &[(INJECTION_VAR, missing.as_os_str())]);
    let warnings = warnings(&output);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with(WARNING) && warnings[0].contains("could not be loaded"), "{warnings:?}");
    assert!(warnings[0].contains(missing.to_str().unwrap()), "{warnings:?}");
}

#[test]
fn a_profiler_that_fails_to_initialise_is_one_warning() {
    let dir = Scratch::new("refusing");
    let probe = build_probe(&dir);
    let vars = [(PROBE_VAR, probe.as_os_str()), (INJECTION_VAR, probe.as_os_str()), (REFUSE_VAR, "1".as_ref())];
    let output = run_case("refusing", &vars);
    let warnings = warnings(&output);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with(WARNING) && warnings[0].contains("InitializeInjectionNvtx2"), "{warnings:?}");
    assert!(warnings[0].contains("returned 0"), "{warnings:?}");
}

#[test]
fn a_library_without_the_entry_point_is_one_warning() {
    let dir = Scratch::new("not-a-tool");
    let source = dir.join("not_a_tool.c");
    std::fs::write(&source, "int not_an_nvtx_tool;\n").unwrap();
    let library = dir.join("libnot_a_tool.so");
    compile(&["-shared".as_ref(), "-fPIC".as_ref(), source.as_os_str()], &library);
    let output = run_case("off", &[(INJECTION_VAR, library.as_os_str())]);
    let warnings = warnings(&output);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(WARNING) && warnings[0].contains("has no InitializeInjectionNvtx2"),
        "{warnings:?}"
    );
}

/// The cases, in the child processes [`run_case`] starts; nothing in this process otherwise.
#[test]
fn child() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    match case.as_str() {
        "tool" => profiler_sees_every_range(),
        "no_tool" => nothing_attaches_without_the_variable(),
        "off" => ranges_are_off(),
        "refusing" => a_refusing_tool_is_not_called(),
        other => panic!("no case {other}"),
    }
}

/// The probe, opened by the test (as well as by NVTX when it loads it) to read what it saw.
struct Probe(*mut c_void);

impl Probe {
    /// Loads the probe into this process with its symbols global, so that anything looking for
    /// an entry point in the process would find it; it stays loaded after NVTX unloads it.
    fn open() -> Probe {
        let path = CString::new(std::env::var(PROBE_VAR).unwrap()).unwrap();
        // SAFETY: the probe's initialisers do nothing; the path is NUL-terminated.
        let library = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        assert!(!library.is_null(), "cannot load the probe {path:?}");
        Probe(library)
    }

    fn symbol(&self, name: &CStr) -> *mut c_void {
        // SAFETY: a handle dlopen returned, and a NUL-terminated name.
        let symbol = unsafe { libc::dlsym(self.0, name.as_ptr()) };
        assert!(!symbol.is_null(), "the probe has no {name:?}");
        symbol
    }

    /// Every range event it recorded: `<thread> push <name>` or `<thread> pop`.
    fn events(&self) -> Vec<String> {
        // SAFETY: nvtx_probe.c defines `char *nvtx_probe_events(void)`, returning a malloc'd
        // string the caller frees; it is copied before it is freed.
        unsafe {
            let events: extern "C" fn() -> *mut c_char = std::mem::transmute(self.symbol(c"nvtx_probe_events"));
            let text = events();
            let lines = CStr::from_ptr(text).to_string_lossy().lines().map(str::to_string).collect();
            libc::free(text.cast());
            lines
        }
    }

    /// How many times its entry point ran.
    fn initialized(&self) -> c_int {
        // SAFETY: nvtx_probe.c defines `int nvtx_probe_initialized(void)`.
        unsafe {
            let initialized: extern "C" fn() -> c_int = std::mem::transmute(self.symbol(c"nvtx_probe_initialized"));
            initialized()
        }
    }

    /// Why its entry point refused the loader, or "".
    fn failure(&self) -> String {
        // SAFETY: nvtx_probe.c defines `const char *nvtx_probe_failure(void)`, returning its own
        // NUL-terminated buffer; it is copied at once.
        unsafe {
            let failure: extern "C" fn() -> *const c_char = std::mem::transmute(self.symbol(c"nvtx_probe_failure"));
            CStr::from_ptr(failure()).to_string_lossy().into_owned()
        }
    }
}

/// A few ranges, nested, through every entry point.
fn push_and_pop() {
    nvtx::range_push("outer");
    {
        let _inner = nvtx::range(format_args!("inner {}", 7));
        nvtx::range_push("cut\0here");
        nvtx::range_pop();
    }
    nvtx::range_push(LONG_NAME.repeat(100));
    nvtx::range_pop();
    nvtx::range_pop();
}

/// A name far longer than a short buffer would hold, not ASCII.
const LONG_NAME: &str = "größe ";

/// A range and the ranges opened inside it.
#[derive(Debug)]
struct Range {
    name: String,
    children: Vec<Range>,
}

impl Range {
    fn names(ranges: &[Range]) -> Vec<&str> {
        ranges.iter().map(|r| r.name.as_str()).collect()
    }

    fn contains(&self, name: &str) -> bool {
        self.children.iter().any(|c| c.name == name || c.contains(name))
    }

    /// Every range below this one named in `names`, as (its parent's name, its name).
    fn parents_of<'a>(&'a self, names: &[&str], found: &mut Vec<(&'a str, &'a str)>) {
        for child in &self.children {
            if names.contains(&child.name.as_str()) {
                found.push((self.name.as_str(), child.name.as_str()));
            }
            child.parents_of(names, found);
        }
    }
}

/// Each thread's ranges as trees, in order, from the probe's events. Panics on a pop with no
/// range open or a range left open.
fn ranges_by_thread(events: &[String]) -> BTreeMap<String, Vec<Range>> {
    let mut open: BTreeMap<String, Vec<Range>> = BTreeMap::new();
    for event in events {
        let mut parts = event.splitn(3, ' ');
        let (thread, kind) = (parts.next().unwrap().to_string(), parts.next().unwrap());
        let stack = open.entry(thread.clone()).or_insert_with(|| vec![Range { name: String::new(), children: vec![] }]);
        match kind {
            "push" => stack.push(Range { name: parts.next().unwrap_or("").to_string(), children: vec![] }),
            "pop" => {
                assert!(stack.len() > 1, "thread {thread}: a pop with no range open");
                let range = stack.pop().unwrap();
                stack.last_mut().unwrap().children.push(range);
            }
            other => panic!("unknown event {other}"),
        }
    }
    open.into_iter()
        .map(|(thread, mut stack)| {
            assert_eq!(stack.len(), 1, "thread {thread}: ranges left open: {:?}", Range::names(&stack[1..]));
            (thread, stack.pop().unwrap().children)
        })
        .collect()
}

/// The phases of a training step, in order.
const PHASES: [&str; 3] = ["forward", "backward", "optimizer"];

/// Steps 1 and 2 of a training run, then steps 1 to 3 of [`Steps`] on the CPU (as `bench step`
/// runs them) and step 1 on the emulator; returns the step names expected, in order.
fn train_steps() -> Vec<String> {
    let runs = Scratch::new("runs");
    let mut config = TrainConfig::tiny_default();
    config.name = "nvtx".into();
    config.output_dir = runs.join("runs");
    config.steps = 3;
    config.batch_size = 4;
    config.warmup_steps = 1;
    config.save_every = 1000;
    config.eval_samples = 16;
    config.quick_eval_every = 0;
    // Stopping early skips the final evaluation.
    train(&config, &RunOptions { quiet: true, stop_after: Some(2), ..Default::default() }).unwrap();

    let model = ClipModel::new(preset("tiny").unwrap()).unwrap();
    let cpu = TrainConfig::for_steps("tiny", 3, Device::Cpu, Precision::Fp32, 3).unwrap();
    let tokenizer = new_run_tokenizer(&cpu, &model).unwrap();
    let mut steps = Steps::new(&model, &cpu, &tokenizer).unwrap();
    steps.run_issued(0).unwrap().loss.item().unwrap();
    steps.run_issued(1).unwrap().loss.item().unwrap();
    steps.run(2).unwrap().loss.item().unwrap();

    let emu = TrainConfig::for_steps("tiny", 3, Device::Emu, Precision::Fp32, 1).unwrap();
    Steps::new(&model, &emu, &tokenizer).unwrap().run_issued(0).unwrap().loss.item().unwrap();

    ["step 1", "step 2", "step 1", "step 2", "step 3", "step 1"].map(String::from).to_vec()
}

fn profiler_sees_every_range() {
    let probe = Probe::open();
    assert!(nvtx::enabled(), "the probe did not attach: {}", probe.failure());
    assert_eq!(probe.initialized(), 1);

    push_and_pop();
    let long = LONG_NAME.repeat(100);
    let direct = ["push outer", "push inner 7", "push cut", "pop", "pop", &format!("push {long}"), "pop", "pop"];
    let events = probe.events();
    let direct: Vec<String> = direct.iter().map(|e| format!("0 {e}")).collect();
    assert_eq!(events, direct, "the direct calls, thread 0 being this one");

    let expected_steps = train_steps();
    let by_thread = ranges_by_thread(&probe.events());
    let ranges = &by_thread["0"];
    let steps: Vec<&Range> = ranges.iter().filter(|r| r.name.starts_with("step ")).collect();
    assert_eq!(steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), expected_steps);
    for step in &steps {
        assert_eq!(Range::names(&step.children), PHASES, "{}", step.name);
        let [forward, backward, optimizer] = &step.children[..] else { unreachable!() };
        for op in ["matmul", "layer_norm", "attention", "infonce"] {
            assert!(forward.contains(op), "{}: no {op} in the forward", step.name);
        }
        for op in ["matmul", "layer_norm_backward", "attention_backward", "infonce_backward"] {
            assert!(backward.contains(op), "{}: no {op} in the backward", step.name);
        }
        assert_eq!(Range::names(&optimizer.children), ["adamw_multi"], "{}", step.name);
        assert_eq!(Range::names(&optimizer.children[0].children), ["clip"], "{}", step.name);
    }
    // The phases are ranges of steps only, and on this thread only.
    let mut parents = Vec::new();
    for tree in by_thread.values().flatten() {
        tree.parents_of(&PHASES, &mut parents);
    }
    assert!(parents.iter().all(|(parent, _)| parent.starts_with("step ")), "{parents:?}");
    assert_eq!(parents.len(), PHASES.len() * steps.len());
}

fn nothing_attaches_without_the_variable() {
    let probe = Probe::open();
    push_and_pop();
    assert!(!nvtx::enabled());
    assert_eq!(probe.initialized(), 0, "the probe's entry point ran");
    assert_eq!(probe.events(), Vec::<String>::new());
}

fn ranges_are_off() {
    for _ in 0..3 {
        push_and_pop();
        assert!(!nvtx::enabled());
    }
}

fn a_refusing_tool_is_not_called() {
    let probe = Probe::open();
    for _ in 0..3 {
        push_and_pop();
        assert!(!nvtx::enabled());
    }
    assert_eq!(probe.initialized(), 1);
    assert!(probe.failure().contains("refused"), "{}", probe.failure());
    // It wrote its functions into the slots before refusing: none of them may be called.
    assert_eq!(probe.events(), Vec::<String>::new());
}
