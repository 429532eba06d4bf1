//! Builds the eBPF object (`kaprobe-ebpf`) and puts it in OUT_DIR for `include_bytes!`.
//!
//! Two toolchains can build it:
//! - `debian` (default where present): Debian's rustc at /usr/bin/rustc ships a prebuilt
//!   `core` for bpfel-unknown-none (package libstd-rust-web-dev-bpf); it is run with
//!   RUSTC_BOOTSTRAP=1.
//! - `nightly`: rustup's nightly with rust-src, using `-Z build-std=core`.
//!
//! Both need `bpf-linker` on PATH or in `<workspace>/target/tools/bin` (where `cargo xtask`
//! installs it). When neither toolchain is usable, the binary is built without the object
//! (it then says so at start-up) unless KAPROBE_REQUIRE_EBPF=1, which `cargo xtask` sets,
//! makes that an error.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("kaprobe.bpf.o");
    for p in [
        "kaprobe-ebpf/src",
        "kaprobe-ebpf/Cargo.toml",
        "kaprobe-ebpf/Cargo.lock",
        "kaprobe-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    for v in [
        "KAPROBE_REQUIRE_EBPF",
        "KAPROBE_EBPF_TOOLCHAIN",
        "KAPROBE_BPF_RUSTC",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let required = env::var("KAPROBE_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    match build(&root) {
        Ok(obj) => {
            std::fs::copy(&obj, &out).unwrap_or_else(|e| panic!("copy {}: {e}", obj.display()));
        }
        Err(why) if !required => {
            println!(
                "cargo:warning=kaprobe is built WITHOUT its eBPF object ({why}); run `cargo xtask build`"
            );
            std::fs::write(&out, b"").expect("write placeholder");
        }
        Err(why) => panic!("cannot build the eBPF object: {why}"),
    }
}

fn find_bpf_linker(root: &Path) -> Option<PathBuf> {
    let local = root.join("target/tools/bin");
    if local.join("bpf-linker").is_file() {
        return Some(local);
    }
    env::split_paths(&env::var_os("PATH")?).find(|d| d.join("bpf-linker").is_file())
}

fn build(root: &Path) -> Result<PathBuf, String> {
    let linker_dir = find_bpf_linker(root).ok_or("bpf-linker not found")?;
    let debian_rustc = env::var("KAPROBE_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let debian_ok = Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").is_dir()
        && Path::new(&debian_rustc).is_file();
    let toolchain = env::var("KAPROBE_EBPF_TOOLCHAIN").unwrap_or_else(|_| {
        if debian_ok {
            "debian".into()
        } else {
            "nightly".into()
        }
    });
    let target_dir = root.join("target/ebpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let path = env::join_paths(
        std::iter::once(linker_dir)
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .map_err(|e| e.to_string())?;

    let mut cmd = match toolchain.as_str() {
        "debian" => {
            let mut c = Command::new(&cargo);
            c.env("RUSTC", &debian_rustc).env("RUSTC_BOOTSTRAP", "1");
            c
        }
        "nightly" => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
        other => return Err(format!("unknown KAPROBE_EBPF_TOOLCHAIN `{other}`")),
    };
    cmd.current_dir(root.join("kaprobe-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--locked",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path);
    if toolchain == "nightly" {
        cmd.args(["-Z", "build-std=core"]);
    }
    // The outer cargo's settings are for the host build, not for this one.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        let keep = k == "CARGO_HOME" || k == "CARGO_NET_OFFLINE";
        if (k.starts_with("CARGO_") && !keep)
            || k.starts_with("RUSTC_WRAPPER")
            || k == "RUSTFLAGS"
            || k == "RUSTC_WORKSPACE_WRAPPER"
            || k == "RUSTDOC"
            || (k == "RUSTC" && toolchain != "debian")
        {
            cmd.env_remove(k.as_ref());
        }
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo for the eBPF build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "the eBPF build ({toolchain} toolchain) failed: {status}"
        ));
    }
    Ok(target_dir.join("bpfel-unknown-none/release/kaprobe"))
}
