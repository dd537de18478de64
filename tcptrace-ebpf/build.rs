//! Builds the kernel side at `cargo build` time: each `src/bpf/*.bpf.c` is compiled
//! with clang for the BPF target, the objects are linked into one with bpftool's
//! static linker (which also drops the DWARF), and a host program derives the
//! record layout and ABI constants from `tcptrace.h` for the Rust mirror.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["state", "retransmit", "reset"];
const HEADERS: &[&str] = &["tcptrace.h", "common.bpf.h", "vmlinux.h"];

fn main() {
    let src = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("src/bpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let clang = tool("CLANG", &["clang-19", "clang"]);
    let bpftool = tool("BPFTOOL", &["bpftool", "/usr/sbin/bpftool"]);

    for file in PROGRAMS
        .iter()
        .map(|p| format!("{p}.bpf.c"))
        .chain(HEADERS.iter().map(ToString::to_string))
        .chain(["abi_layout.c".to_string()])
    {
        println!("cargo:rerun-if-changed=src/bpf/{file}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=BPFTOOL");

    let arch = match env::var("CARGO_CFG_TARGET_ARCH").unwrap().as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        "riscv64" => "riscv",
        "powerpc64" => "powerpc",
        "s390x" => "s390",
        other => panic!("tcptrace-ebpf: no BPF target arch for {other}"),
    };

    let mut objects = Vec::new();
    for prog in PROGRAMS {
        let obj = out.join(format!("{prog}.bpf.o"));
        run(Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg("-I")
            .arg(&src)
            .arg("-c")
            .arg(src.join(format!("{prog}.bpf.c")))
            .arg("-o")
            .arg(&obj));
        objects.push(obj);
    }
    run(Command::new(&bpftool)
        .args(["gen", "object"])
        .arg(out.join("tcptrace.bpf.o"))
        .args(&objects));

    let layout_bin = out.join("abi_layout");
    run(Command::new(&clang)
        .args(["-O0", "-Wall", "-Werror", "-I"])
        .arg(&src)
        .arg(src.join("abi_layout.c"))
        .arg("-o")
        .arg(&layout_bin));
    let generated = Command::new(&layout_bin)
        .output()
        .expect("tcptrace-ebpf: run abi_layout");
    assert!(
        generated.status.success(),
        "tcptrace-ebpf: abi_layout failed"
    );
    std::fs::write(out.join("abi_layout.rs"), generated.stdout).unwrap();
}

/// The first of `names` that runs, or the one named by the environment variable.
fn tool(var: &str, names: &[&str]) -> PathBuf {
    if let Some(path) = env::var_os(var) {
        return PathBuf::from(path);
    }
    for name in names {
        if Command::new(name).arg("--version").output().is_ok() {
            return PathBuf::from(name);
        }
    }
    panic!(
        "tcptrace-ebpf: none of {names:?} found; install the build dependencies with \
         `cargo xtask setup` (Debian: apt-get install clang-19 libbpf-dev bpftool) or set {var}"
    );
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "tcptrace-ebpf: cannot run {}: {e}",
            cmd.get_program().display()
        )
    });
    assert!(
        status.success(),
        "tcptrace-ebpf: {cmd:?} failed with {status}"
    );
}
