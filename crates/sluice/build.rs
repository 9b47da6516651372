//! Compiles every `bpf/*.bpf.c` with clang into `$OUT_DIR/<name>.bpf.o`; the
//! daemon embeds the objects with `aya::include_bytes_aligned!`. A missing
//! tool or header fails the build with one line naming the Debian package.

use std::{
    env,
    path::{Path, PathBuf},
    process::{exit, Command},
};

fn fail(msg: &str) -> ! {
    // cargo prints build-script stderr; keep it to the one line that matters.
    eprintln!("error: {msg}");
    exit(1);
}

fn find_clang() -> String {
    let candidates = env::var("CLANG")
        .ok()
        .into_iter()
        .chain(["clang", "clang-19", "clang-16", "clang-15", "clang-14"].map(String::from));
    for c in candidates {
        if Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    fail("clang not found: install it with `apt-get install clang` (or run scripts/setup.sh)");
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let bpf_dir = root.join("bpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail(
            "libbpf headers not found (/usr/include/bpf/bpf_helpers.h): install them with `apt-get install libbpf-dev`",
        );
    }
    if !Path::new("/usr/include/linux/bpf.h").exists() {
        fail("kernel UAPI headers not found (/usr/include/linux/bpf.h): install them with `apt-get install linux-libc-dev`");
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => fail(&format!("unsupported target architecture {other}")),
    };
    let clang = find_clang();

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&bpf_dir)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", bpf_dir.display())))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    // The spin-lock build of the XDP program exists only so the benchmark
    // can compare it with the compare-and-swap limiter that ships.
    let mut builds: Vec<(PathBuf, String, Option<&str>)> = Vec::new();
    for src in &sources {
        let stem = src.file_name().unwrap().to_string_lossy().replace(".bpf.c", "");
        if stem == "sluice_xdp" {
            builds.push((src.clone(), "sluice_xdp_spin".into(), Some("-DSLUICE_LIMIT_SPINLOCK")));
        }
        builds.push((src.clone(), stem, None));
    }
    for (src, stem, define) in builds {
        let obj = out.join(format!("{stem}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3"])
            .args(define)
            .arg(format!(
                "-D__TARGET_ARCH_{}",
                if arch == "x86_64" { "x86" } else { "arm64" }
            ))
            .arg(format!("-I{}", bpf_dir.join("include").display()))
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| fail(&format!("running {clang}: {e}")));
        if !status.success() {
            fail(&format!("{clang} failed on {}", src.display()));
        }
    }

    // Host build of the limiter arithmetic (bpf/include/gcra.h) for the unit
    // tests: the same C the XDP program runs.
    cc::Build::new()
        .file(bpf_dir.join("test/gcra_host.c"))
        .include(bpf_dir.join("include"))
        .include(format!("/usr/include/{multiarch}"))
        .warnings_into_errors(true)
        .compile("sluice_gcra_host");
}
