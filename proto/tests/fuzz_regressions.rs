//! Replays every input in `fuzz/regressions/<target>/` through its fuzz target's entry point:
//! inputs that once crashed a target (or that exercise a refusal the fuzzers reach) must pass.
#![cfg(feature = "testing")]

use std::path::PathBuf;

use edgesync_proto::fuzzing;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the regressions directory exists") {
        let path = entry.expect("readable").path();
        let bytes = std::fs::read(&path).expect("readable input");
        run(&bytes);
        n += 1;
    }
    n
}

#[test]
fn decode_regressions_pass() {
    assert!(replay("decode", fuzzing::decode) > 0, "inputs to replay");
}

#[test]
fn session_regressions_pass() {
    assert!(replay("session", fuzzing::session) > 0, "inputs to replay");
}

#[test]
fn remote_change_regressions_pass() {
    assert!(
        replay("remote_change", fuzzing::remote_change) > 0,
        "inputs to replay"
    );
}

#[test]
fn snapshot_regressions_pass() {
    assert!(
        replay("snapshot", fuzzing::snapshot) > 0,
        "inputs to replay"
    );
}
