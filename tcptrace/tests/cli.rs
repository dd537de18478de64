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
