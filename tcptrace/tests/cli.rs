//! The binary's handling of bad input: clap's error and exit code 2, no panic.

use std::process::Command;

fn tcptrace(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_exit_2_with_a_clear_error() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["events", "--port", "70000"],
            "invalid value '70000' for '--port <PORT>'",
        ),
        (
            &["events", "--state", "SLEEPY"],
            "unknown TCP state 'SLEEPY'",
        ),
        (&["events", "--ring-size", "3M"], "must be a power of two"),
        (&["events", "--duration", "soon"], "is not a duration"),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
    ];
    for (args, want) in cases {
        let (code, stderr) = tcptrace(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("events"), "{text}");
}

#[test]
fn a_bad_config_file_is_one_line_naming_the_key_and_exit_2() {
    let path = std::env::temp_dir().join(format!("tcptrace-bad-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "interval = \"30s\"\nlisten = \"127.0.0.1:9911\"\nintervl = \"5s\"\n",
    )
    .unwrap();
    let (code, stderr) = tcptrace(&["daemon", "--config", path.to_str().unwrap()]);
    std::fs::write(&path, "census_interval = \"often\"\n").unwrap();
    let (code2, stderr2) = tcptrace(&["daemon", "--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "tcptrace: error: config {}: line 3 (`intervl = \"5s\"`): unknown field `intervl`",
            path.display()
        )),
        "{stderr}"
    );
    assert_eq!(code2, Some(2), "{stderr2}");
    assert!(
        stderr2.contains("line 1 (`census_interval = \"often\"`): 'often' is not a duration"),
        "{stderr2}"
    );
    let (code3, stderr3) = tcptrace(&["daemon", "--config", "/nonexistent/tcptrace.toml"]);
    assert_eq!(code3, Some(2));
    assert!(
        stderr3.contains("config /nonexistent/tcptrace.toml: No such file"),
        "{stderr3}"
    );
}
