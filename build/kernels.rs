//! Compiles `kernels/*.cu` twice (DESIGN 3.1):
//!
//! - for the host, always, through the `cc` crate with `MSCLIP_EMU` defined: the SIMT emulator
//!   (`kernels/emu/`) runs these objects, so every kernel is testable without a GPU;
//! - for Hopper with nvcc when one is found (`NVCC`, `CUDA_HOME/bin`, `PATH`, then the repo-local
//!   install of `scripts/install-cuda-toolchain.sh`): a fatbin per module holding the sm_90a cubin
//!   (the `a` target has wgmma, kernels/wgmma.cuh; it runs on compute capability 9.0 only) and
//!   compute_90 PTX (newer GPUs JIT the PTX, where the wgmma kernels trap and are never chosen),
//!   with `ptxas -v`'s per-kernel report. A kernel that spills registers fails the build, and so
//!   does one whose wgmma sequences ptxas had to serialise (its C7517/C7519 notes).
//!
//! Writes `$OUT_DIR/kernels.rs`, which `src/backend/gpu/modules.rs` includes: each module's
//! kernel names, its fatbin (when nvcc ran), the ptxas report as text and each kernel's
//! registers, static shared memory and stack as a table.
//!
//! Entry points are the `extern "C" __global__` functions of each source after preprocessing
//! (so macros may stamp out per-dtype instantiations): the emulator header, under
//! `MSCLIP_SCAN_ENTRY_POINTS`, turns `__global__` into a marker that survives `-E`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Module {
    name: String,
    source: PathBuf,
    kernels: Vec<String>,
}

/// Per-kernel resources from `ptxas -v`.
#[derive(Default)]
struct KernelResources {
    name: String,
    registers: u32,
    shared_bytes: u32,
    stack_bytes: u32,
    spill_stores: u32,
    spill_loads: u32,
    /// ptxas had to inject a warpgroup wait or arrive (notes C7517, C7519): the kernel's wgmma
    /// sequences run serialised, or rely on the compiler for a wait the source forgot.
    wgmma_serialised: bool,
}

pub fn emit() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = manifest.join("kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let modules = find_modules(&kernel_dir);
    build_emulator(&kernel_dir, &out, &modules);
    let nvcc = find_nvcc(&manifest);
    let mut fatbins = Vec::new();
    let mut report = String::new();
    let mut resources = Vec::new();
    if let Some(nvcc) = &nvcc {
        let version = nvcc_version(nvcc);
        writeln!(report, "nvcc: {} ({version})", nvcc.display()).unwrap();
        writeln!(
            report,
            "{:<40} {:>5} {:>10} {:>7} {:>6} {:>6}",
            "kernel", "regs", "smem B", "stack B", "spillS", "spillL"
        )
        .unwrap();
        let mut spills = Vec::new();
        let mut serialised = Vec::new();
        for module in &modules {
            let fatbin = out.join(format!("{}.fatbin", module.name));
            for k in compile_module(nvcc, &kernel_dir, module, &fatbin) {
                writeln!(
                    report,
                    "{:<40} {:>5} {:>10} {:>7} {:>6} {:>6}",
                    k.name, k.registers, k.shared_bytes, k.stack_bytes, k.spill_stores, k.spill_loads
                )
                .unwrap();
                if k.spill_stores > 0 || k.spill_loads > 0 {
                    spills.push(format!("{} ({} B stores, {} B loads)", k.name, k.spill_stores, k.spill_loads));
                }
                // selftest.cu misuses wgmma on purpose, for the emulator's error reports.
                if k.wgmma_serialised && module.name != "selftest" {
                    serialised.push(k.name.clone());
                }
                resources.push(k);
            }
            fatbins.push(Some(fatbin));
        }
        fs::write(out.join("ptxas_report.txt"), &report).expect("write the ptxas report");
        if !spills.is_empty() {
            panic!("register spills are build errors; these kernels spill: {}\n{report}", spills.join(", "));
        }
        if !serialised.is_empty() {
            panic!(
                "ptxas injected warpgroup waits or arrives (C7517/C7519) into {}: keep wgmma sequences free of \
                 branches and accumulator accesses between fence and wait",
                serialised.join(", ")
            );
        }
    } else {
        report.push_str(
            "nvcc was not found (NVCC, CUDA_HOME/bin, PATH, .cuda-toolchain/): no GPU images were built.\n\
             Run scripts/install-cuda-toolchain.sh, then rebuild.\n",
        );
        fatbins.resize(modules.len(), None);
    }
    write_rust_table(&out, &modules, &fatbins, nvcc.is_some(), &resources, &report);
}

fn find_modules(kernel_dir: &Path) -> Vec<Module> {
    let mut sources: Vec<PathBuf> = fs::read_dir(kernel_dir)
        .expect("read kernels/")
        .map(|e| e.expect("read kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    sources
        .into_iter()
        .map(|source| {
            let name = source.file_stem().unwrap().to_string_lossy().into_owned();
            let kernels = entry_points(&preprocess(kernel_dir, &source));
            assert!(!kernels.is_empty(), "{} defines no extern \"C\" __global__ kernel", source.display());
            Module { kernels, name, source }
        })
        .collect()
}

/// The source after the C++ preprocessor, in emulator mode with the entry-point marker.
fn preprocess(kernel_dir: &Path, source: &Path) -> String {
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let output = compiler
        .to_command()
        .args(["-E", "-P", "-std=c++17", "-DMSCLIP_EMU=1", "-DMSCLIP_SCAN_ENTRY_POINTS=1"])
        .arg("-I")
        .arg(kernel_dir)
        .args(["-x", "c++"])
        .arg(source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ preprocessor on {}: {e}", source.display()));
    if !output.status.success() {
        panic!("preprocessing {} failed:\n{}", source.display(), String::from_utf8_lossy(&output.stderr));
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Names of the `extern "C" __global__ void` functions in preprocessed source.
fn entry_points(text: &str) -> Vec<String> {
    const MARKER: &str = "extern \"C\" __msclip_global__ void";
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut names = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(MARKER) {
        rest = &rest[at + MARKER.len()..];
        let tail = rest.trim_start();
        let name: String = tail.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert!(!name.is_empty(), "an extern \"C\" __global__ function without a readable name");
        names.push(name);
    }
    names
}

/// One C++ translation unit per module (so helpers of different modules never collide) that
/// includes the kernel source and exports its table of entry points, plus the registry the
/// runtime searches; and a second copy of every module compiled with GCC's `-fsanitize=thread`
/// instrumentation, whose access hooks the emulator serves (kernels/emu/tsan_abi.cpp) for the
/// sanitizer and the profiler. That copy lives in a namespace per module, with its entry points
/// renamed, so none of its symbols (inline helpers above all) merges with the plain copy's.
fn build_emulator(kernel_dir: &Path, out: &Path, modules: &[Module]) {
    let emu_dir = out.join("emu");
    fs::create_dir_all(&emu_dir).expect("create OUT_DIR/emu");
    let mut build = emulator_build(kernel_dir);
    for file in ["runtime", "fiber", "wgmma", "memory_map", "sanitizer", "profiler", "tsan_abi"] {
        build.file(kernel_dir.join(format!("emu/{file}.cpp")));
    }
    let mut instrumented = emulator_build(kernel_dir);
    // No scalar replacement of aggregates: a vector load (`*(const float4*)p`) stays one access of
    // its width, as on the GPU, instead of four scalar ones.
    instrumented.define("MSCLIP_EMU_CHECKED", "1").flag("-fsanitize=thread").flag("-fno-tree-sra");
    let mut registry = String::from("#include \"emu/emu.h\"\n");
    let mut tables = [("kModules", String::new()), ("kInstrumentedModules", String::new())];
    for m in modules {
        let plain = emu_dir.join(format!("emu_{}.cpp", m.name));
        write_if_changed(&plain, &plain_unit(m));
        build.file(&plain);
        let checked = emu_dir.join(format!("emu_instrumented_{}.cpp", m.name));
        write_if_changed(&checked, &instrumented_unit(m));
        instrumented.file(&checked);
        for (prefix, (_, table)) in ["msclip_emu_module_", "msclip_emu_instrumented_module_"].iter().zip(&mut tables) {
            writeln!(registry, "extern \"C\" const emu::KernelEntry* {prefix}{}(int* count);", m.name).unwrap();
            writeln!(table, "    {{\"{0}\", &{prefix}{0}}},", m.name).unwrap();
        }
    }
    registry.push_str("namespace emu {\nstruct ModuleTable {\n    const char* name;\n    const KernelEntry* (*entries)(int* count);\n};\n");
    for (name, table) in &tables {
        write!(registry, "extern const ModuleTable {name}[] = {{\n{table}    {{nullptr, nullptr}},\n}};\n").unwrap();
    }
    registry.push_str("}  // namespace emu\n");
    let registry_path = emu_dir.join("emu_registry.cpp");
    write_if_changed(&registry_path, &registry);
    build.file(&registry_path);
    instrumented.compile("msclip_emu_instrumented");
    build.compile("msclip_emu");
}

fn emulator_build(kernel_dir: &Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .define("MSCLIP_EMU", "1")
        .include(kernel_dir)
        .flag_if_supported("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unused-parameter");
    build
}

/// The function returning a module's table of entry points, each as `symbol(name)`.
fn entry_table(function: &str, entries: &[(String, &String)]) -> String {
    let rows: String =
        entries.iter().map(|(symbol, name)| format!("        MSCLIP_EMU_ENTRY({symbol}, \"{name}\"),\n")).collect();
    format!(
        "extern \"C\" const emu::KernelEntry* {function}(int* count) {{\n    \
         static const emu::KernelEntry entries[] = {{\n{rows}        {{nullptr, nullptr, 0, nullptr}},\n    }};\n    \
         *count = static_cast<int>(sizeof(entries) / sizeof(entries[0])) - 1;\n    return entries;\n}}\n"
    )
}

fn plain_unit(m: &Module) -> String {
    let entries: Vec<_> = m.kernels.iter().map(|k| (k.clone(), k)).collect();
    format!(
        "#include \"{}\"\n\n{}",
        m.source.display(),
        entry_table(&format!("msclip_emu_module_{}", m.name), &entries)
    )
}

fn instrumented_unit(m: &Module) -> String {
    let namespace = format!("msclip_checked_{}", m.name);
    let mut text =
        String::from("#include \"emu/emu.h\"  // before the namespace: it holds the runtime's declarations\n");
    for k in &m.kernels {
        writeln!(text, "#define {k} {k}__instrumented").unwrap();
    }
    write!(text, "namespace {namespace} {{\n#include \"{}\"\n}}  // namespace {namespace}\n", m.source.display())
        .unwrap();
    for k in &m.kernels {
        writeln!(text, "#undef {k}").unwrap();
    }
    let entries: Vec<_> = m.kernels.iter().map(|k| (format!("{namespace}::{k}__instrumented"), k)).collect();
    text.push_str(&entry_table(&format!("msclip_emu_instrumented_module_{}", m.name), &entries));
    text
}

fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let candidates = [
        env::var_os("NVCC").map(PathBuf::from),
        env::var_os("CUDA_HOME").map(|home| PathBuf::from(home).join("bin/nvcc")),
        env::var_os("PATH").and_then(|path| env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| p.is_file())),
        Some(manifest.join(".cuda-toolchain/bin/nvcc")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn nvcc_version(nvcc: &Path) -> String {
    let output = Command::new(nvcc).arg("--version").output();
    match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.contains("release"))
            .unwrap_or("unknown version")
            .trim()
            .to_string(),
        Ok(o) => panic!("{} --version failed: {}", nvcc.display(), String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run {}: {e}", nvcc.display()),
    }
}

/// nvcc for sm_90a (cubin) plus compute_90 PTX in one fatbin; returns ptxas's per-kernel report.
fn compile_module(nvcc: &Path, kernel_dir: &Path, module: &Module, fatbin: &Path) -> Vec<KernelResources> {
    let output = Command::new(nvcc)
        .args(["-std=c++17", "-O3", "--fatbin", "-Xptxas", "-v", "-lineinfo"])
        .args(["-gencode", "arch=compute_90a,code=sm_90a", "-gencode", "arch=compute_90,code=compute_90"])
        .arg("-I")
        .arg(kernel_dir)
        .arg("-o")
        .arg(fatbin)
        .arg(&module.source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!("nvcc failed on {}:\n{log}{}", module.source.display(), String::from_utf8_lossy(&output.stdout));
    }
    parse_ptxas(&log)
}

/// Reads `ptxas info` lines: "Compiling entry function 'k' for 'sm_90a'", then
/// "N bytes stack frame, N bytes spill stores, N bytes spill loads" and
/// "Used N registers, ... N bytes smem, ...", and the notes "(C7517) warpgroup.wait is injected
/// ... in function 'k'" / "(C7519) warpgroup.arrive ...".
fn parse_ptxas(log: &str) -> Vec<KernelResources> {
    let mut kernels: Vec<KernelResources> = Vec::new();
    let mut serialised = Vec::new();
    for line in log.lines() {
        if (line.contains("(C7517)") || line.contains("(C7519)"))
            && let Some(at) = line.find("in function '")
        {
            serialised.push(line[at + "in function '".len()..].split('\'').next().unwrap_or_default().to_string());
            continue;
        }
        if let Some(at) = line.find("Compiling entry function '") {
            let rest = &line[at + "Compiling entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            kernels.push(KernelResources { name, ..Default::default() });
            continue;
        }
        let Some(k) = kernels.last_mut() else { continue };
        if line.contains("spill stores") {
            k.stack_bytes = number_before(line, "bytes stack frame");
            k.spill_stores = number_before(line, "bytes spill stores");
            k.spill_loads = number_before(line, "bytes spill loads");
        } else if line.contains("Used") && line.contains("registers") {
            k.registers = number_before(line, "registers");
            k.shared_bytes = number_before(line, "bytes smem");
        }
    }
    for k in &mut kernels {
        k.wgmma_serialised = serialised.contains(&k.name);
    }
    kernels
}

/// The integer just before `label` in `line`, 0 when absent.
fn number_before(line: &str, label: &str) -> u32 {
    let Some(at) = line.find(label) else { return 0 };
    line[..at].split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// `resources` is empty when nvcc did not run (`built` false).
fn write_rust_table(
    out: &Path,
    modules: &[Module],
    fatbins: &[Option<PathBuf>],
    built: bool,
    resources: &[KernelResources],
    report: &str,
) {
    let mut text = String::from("// Generated by build/kernels.rs.\n");
    writeln!(text, "pub const GPU_IMAGES_BUILT: bool = {built};").unwrap();
    writeln!(text, "pub const PTXAS_REPORT: &str = {report:?};").unwrap();
    text.push_str("pub const KERNEL_RESOURCES: &[KernelResources] = &[\n");
    for k in resources {
        writeln!(
            text,
            "    KernelResources {{ name: {:?}, registers: {}, shared_bytes: {}, stack_bytes: {} }},",
            k.name, k.registers, k.shared_bytes, k.stack_bytes
        )
        .unwrap();
    }
    text.push_str("];\n");
    text.push_str("pub const MODULES: &[KernelModule] = &[\n");
    for (m, fatbin) in modules.iter().zip(fatbins) {
        let image = match fatbin {
            Some(path) => format!("Some(include_bytes!({:?}))", path.display().to_string()),
            None => "None".to_string(),
        };
        writeln!(text, "    KernelModule {{ name: {:?}, kernels: &{:?}, image: {image} }},", m.name, m.kernels)
            .unwrap();
    }
    text.push_str("];\n");
    write_if_changed(&out.join("kernels.rs"), &text);
}
