//! `Report`: what `main` prints for a library error is readable text, not a Debug dump.

use qemu_test_support::machine as common;

use common::Scratch;
use qemu_machine::{Machine, Report};

#[tokio::test]
async fn a_failed_launch_reports_the_command_status_and_output_readably() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().args(["-no-such-option"]));
    let err = vm.launch().await.unwrap_err();
    let report = err.report();
    let printed = format!("{:?}", Report::from(err));
    assert_eq!(printed, report);
    for wanted in [
        "launching QEMU failed",
        "exit status: 1",
        "command: ",
        "-no-such-option: invalid option",
    ] {
        assert!(printed.contains(wanted), "{printed} lacks {wanted}");
    }
    for unwanted in ["LaunchFailure", "kind:", "[\""] {
        assert!(!printed.contains(unwanted), "{printed} has {unwanted}");
    }
}
