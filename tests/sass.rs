//! Static evidence from the compiled GPU images: the kernels that should run on tensor cores
//! contain tensor-core instructions in their SASS. Needs cuobjdump and nvdisasm (13.2 or newer,
//! installed by scripts/install-cuda-toolchain.sh); without them, or without GPU images in this
//! build, the test says so and passes. Register spills are build errors already (build.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use msclip::backend::gpu::AttnTiles;
use msclip::backend::gpu::modules::MODULES;

/// Kernels whose products must run on tensor cores, by module: mma.sync is HMMA in the SASS,
/// wgmma (kernels/wgmma.cuh) HGMMA. Attention's in every head dim and tile shape the Rust side
/// may launch.
fn tensor_core_kernels() -> Vec<(&'static str, Vec<String>)> {
    let attention = ["fwd", "bwd"]
        .into_iter()
        .flat_map(|stage| {
            [32, 64].into_iter().flat_map(move |d| AttnTiles::ALL.map(|t| format!("attention_{stage}_d{d}_{t}_bf16")))
        })
        .collect();
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    vec![
        ("selftest", names(&["selftest_mma", "selftest_wgmma"])),
        ("attention", attention),
        (
            "infonce",
            names(&["infonce_fwd_bf16", "infonce_bwd_bf16", "infonce_fwd_wgmma_bf16", "infonce_bwd_wgmma_bf16"]),
        ),
    ]
}

/// The directory holding cuobjdump and nvdisasm: next to `NVCC`, or the repo-local install.
fn tool_dir() -> Option<PathBuf> {
    let from_nvcc = std::env::var_os("NVCC").and_then(|p| Path::new(&p).parent().map(Path::to_path_buf));
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cuda-toolchain/bin");
    [from_nvcc, Some(local)]
        .into_iter()
        .flatten()
        .find(|d| d.join("cuobjdump").is_file() && d.join("nvdisasm").is_file())
}

fn sass_of(tools: &Path, image: &[u8], name: &str) -> String {
    let path = std::env::temp_dir().join(format!("msclip-sass-{name}-{}.fatbin", std::process::id()));
    std::fs::write(&path, image).unwrap();
    let path_var = std::env::join_paths(
        std::iter::once(tools.to_path_buf())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let out = Command::new(tools.join("cuobjdump")).arg("-sass").arg(&path).env("PATH", path_var).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "cuobjdump on {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tensor-core instruction a kernel's products compile to.
fn instruction_for(kernel: &str) -> &'static str {
    if kernel.contains("wgmma") { "HGMMA" } else { "HMMA" }
}

/// Instructions whose mnemonic starts with `mnemonic`, per kernel: cuobjdump prints each
/// kernel's SASS after a `Function : <name>` line.
fn count_per_kernel(sass: &str, mnemonic: &str) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in sass.lines() {
        if let Some(at) = line.find("Function : ") {
            counts.push((line[at + "Function : ".len()..].trim().to_string(), 0));
        } else if line.split_whitespace().any(|word| word.starts_with(mnemonic))
            && let Some(last) = counts.last_mut()
        {
            last.1 += 1;
        }
    }
    counts
}

#[test]
fn tensor_core_kernels_contain_tensor_core_instructions() {
    let Some(tools) = tool_dir() else {
        eprintln!("SASS check skipped: cuobjdump/nvdisasm not found (scripts/install-cuda-toolchain.sh installs them)");
        return;
    };
    for (module, kernels) in tensor_core_kernels() {
        let m = MODULES.iter().find(|m| m.name == module).unwrap_or_else(|| panic!("no module {module}"));
        let Some(image) = m.image else {
            eprintln!("SASS check skipped: this build has no GPU images (nvcc was not found)");
            return;
        };
        let sass = sass_of(&tools, image, module);
        for kernel in &kernels {
            let mnemonic = instruction_for(kernel);
            let counts = count_per_kernel(&sass, mnemonic);
            let count = counts.iter().find(|(name, _)| name == kernel).map(|(_, c)| *c);
            eprintln!("{kernel}: {count:?} {mnemonic}");
            assert!(count.is_some_and(|c| c > 0), "{kernel} has no {mnemonic} in the SASS of kernels/{module}.cu");
        }
    }
}
