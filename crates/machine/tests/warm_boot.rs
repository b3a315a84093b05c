//! Saving a booted Linux guest and restoring it instead of booting (real QEMU, the Linux
//! test guest): the restored guest answers on its console and its agent, two restores of
//! one state run independently on overlays of their own, what QEMU cannot migrate is
//! refused, a damaged state file is a clear error that leaves nothing behind, and the
//! snapshot cache builds once and restores afterwards.

use qemu_test_support::machine as common;

use std::path::Path;
use std::time::Duration;

use common::{linux_guest, qemu_children, wait_for_shell, Scratch, T};
use qemu_machine::devices::{Disk, Share9p};
use qemu_machine::snapshot_cache::{SnapshotCache, Warm};
use qemu_machine::{ErrorKind, Machine, RunOptions};

const SAVE: Duration = Duration::from_secs(120);
const RESTORE: Duration = Duration::from_secs(60);
const DISK_BYTES: u64 = 1024 * 1024;

async fn run(vm: &Machine, command: &str) -> String {
    let done = vm
        .console()
        .unwrap()
        .run(command, RunOptions::new(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(done.status, 0, "{command}: {}", done.output);
    done.output
}

/// The QEMU processes of this test binary whose command line mentions `marker` (the
/// tests of this file run at once: each looks for its own).
fn qemu_using(marker: &Path) -> Vec<u32> {
    let marker = marker.to_string_lossy().into_owned();
    qemu_children()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        })
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One cold boot, then everything a saved state must do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_guests_answer_run_independently_and_damaged_states_are_refused() {
    let scratch = Scratch::new();
    let files = tempfile::tempdir().unwrap();
    let disk = files.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; DISK_BYTES as usize]).unwrap();
    let (builder, _) = linux_guest(&scratch);
    let builder = builder.guest_agent().disk(Disk::new(&disk));

    let mut vm = Machine::new(builder.clone());
    vm.launch().await.unwrap();
    wait_for_shell(&vm).await;
    run(&vm, "echo saved-state > /tmp/marker").await;
    let state = files.path().join("booted.state");
    let info = vm.save_state(&state, SAVE).await.unwrap();
    vm.shutdown().await.unwrap();
    assert!(info.was_running);
    assert_eq!(std::fs::metadata(&state).unwrap().len(), info.file_bytes());
    assert_eq!(files_in(files.path()), ["booted.state", "disk.raw"]);

    // Console, agent, and no boot: the restored console shows no boot messages.
    let mut warm = Machine::new(builder.clone());
    warm.launch_restored(&state, RESTORE).await.unwrap();
    assert_eq!(run(&warm, "cat /tmp/marker").await.trim(), "saved-state");
    warm.guest_agent(T).await.unwrap().ping().await.unwrap();
    let history = String::from_utf8_lossy(&warm.console().unwrap().history()).into_owned();
    assert!(
        !history.contains("GUEST-READY") && !history.contains("Linux version"),
        "the restored guest booted: {history}"
    );
    warm.shutdown().await.unwrap();

    // Two at once, each writing to an overlay of its own.
    let mut a = Machine::new(builder.clone());
    let mut b = Machine::new(builder.clone());
    let (ra, rb) = tokio::join!(
        a.launch_restored(&state, RESTORE),
        b.launch_restored(&state, RESTORE)
    );
    ra.unwrap();
    rb.unwrap();
    let write = |who: &str| {
        format!("echo written-by-{who} > /tmp/w && dd if=/tmp/w of=/dev/vda conv=fsync 2>/dev/null && sync")
    };
    let read = "dd if=/dev/vda bs=64 count=1 2>/dev/null | tr -d '\\000'; echo";
    run(&a, &write("a")).await;
    run(&b, &write("b")).await;
    let (seen_a, seen_b) = (run(&a, read).await, run(&b, read).await);
    assert!(
        seen_a.contains("written-by-a") && !seen_a.contains("written-by-b"),
        "{seen_a}"
    );
    assert!(
        seen_b.contains("written-by-b") && !seen_b.contains("written-by-a"),
        "{seen_b}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|&b| b == 0),
        "the base disk was written"
    );

    // Damaged states: clear errors, no QEMU, no files left.
    let bytes = std::fs::read(&state).unwrap();
    let truncated = files.path().join("truncated.state");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let corrupt = files.path().join("corrupt.state");
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    std::fs::write(&corrupt, &damaged).unwrap();
    let garbage = files.path().join("garbage.state");
    std::fs::write(&garbage, b"not a state at all").unwrap();
    drop(bytes);
    for (path, says) in [
        (&truncated, "truncated"),
        (&corrupt, "corrupt"),
        (&garbage, "not a state file"),
    ] {
        let mut bad = Machine::new(builder.clone());
        let err = bad.launch_restored(path, RESTORE).await.unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Migration { .. }) && err.to_string().contains(says),
            "{}: {err}",
            path.display()
        );
        assert!(!bad.is_running());
        assert!(qemu_using(&disk).is_empty(), "QEMU left running");
    }
    assert_eq!(
        files_in(files.path()),
        [
            "booted.state",
            "corrupt.state",
            "disk.raw",
            "garbage.state",
            "truncated.state"
        ]
    );

    // A restore whose future is dropped leaves the configuration as it was, and dropping
    // the machine ends its QEMU.
    let mut cancelled = Machine::new(builder.clone());
    let _ = tokio::time::timeout(
        Duration::from_millis(50),
        cancelled.launch_restored(&state, RESTORE),
    )
    .await;
    assert_eq!(cancelled.config().extra_args(), builder.extra_args());
    drop(cancelled);
    assert!(qemu_using(&disk).is_empty(), "QEMU left running");

    // Another configuration is refused before QEMU starts.
    let other = Machine::new(builder.clone().args(["-smp", "2"]));
    let mut other = other;
    let err = other.launch_restored(&state, RESTORE).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::StaleState(_)), "{err}");
    assert!(qemu_using(&disk).is_empty());
}

#[tokio::test]
async fn a_9p_share_is_refused_with_its_reason() {
    let scratch = Scratch::new();
    let shared = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("pc")
            .share_9p(Share9p::new("data", shared.path()))
            .args(["-S"]),
    );
    vm.launch().await.unwrap();
    let err = vm
        .save_state(files.path().join("s.state"), SAVE)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Config(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("9p") && text.contains("cannot migrate"),
        "{text}"
    );
    assert!(files_in(files.path()).is_empty());
    vm.shutdown().await.unwrap();
}

/// The cache builds once (boot, readiness pattern, save), restores afterwards without
/// booting, and a changed initrd is another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_cache_builds_once_and_a_changed_initrd_misses() {
    let scratch = Scratch::new();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SnapshotCache::new(cache_dir.path());
    let (builder, _) = linux_guest(&scratch);

    // Two at once on an empty cache: one builds (under the entry's lock), the other waits
    // for the lock and restores what the first built.
    let mut first = Machine::new(builder.clone());
    let mut other = Machine::new(builder.clone());
    let (a, b) = tokio::join!(
        cache.launch(&mut first, "guest# ", SAVE),
        cache.launch(&mut other, "guest# ", SAVE)
    );
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|w| *w == Warm::Hit);
    assert_eq!(outcomes, [Warm::Built, Warm::Hit]);
    assert_eq!(run(&first, "echo $((6*7))").await.trim(), "42");
    assert_eq!(run(&other, "echo $((6*7))").await.trim(), "42");
    first.shutdown().await.unwrap();
    other.shutdown().await.unwrap();

    let mut second = Machine::new(builder.clone());
    let warm = cache.launch(&mut second, "guest# ", SAVE).await.unwrap();
    assert_eq!(warm, Warm::Hit);
    assert_eq!(run(&second, "echo $((7*6))").await.trim(), "42");
    let history = String::from_utf8_lossy(&second.console().unwrap().history()).into_owned();
    assert!(
        !history.contains("GUEST-READY"),
        "a cache hit booted: {history}"
    );
    second.shutdown().await.unwrap();
    let entries = cache.list().unwrap();
    assert_eq!(entries.len(), 1);

    // A damaged entry is rebuilt, not an error.
    let mut bytes = std::fs::read(&entries[0].path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&entries[0].path, &bytes).unwrap();
    drop(bytes);
    let mut third = Machine::new(builder.clone());
    let warm = cache.launch(&mut third, "guest# ", SAVE).await.unwrap();
    assert_eq!(warm, Warm::Built);
    assert_eq!(run(&third, "echo $((6*7))").await.trim(), "42");
    third.shutdown().await.unwrap();
    assert_eq!(cache.list().unwrap().len(), 1);

    // The same guest with another initrd (a copy with a byte appended: gzip ignores it).
    let files = tempfile::tempdir().unwrap();
    let dir = common::linux_guest_dir();
    let initrd = files.path().join("initrd.gz");
    let mut bytes = std::fs::read(dir.join("initrd.gz")).unwrap();
    let key_before = cache.key(&builder, "guest# ").unwrap();
    let original = builder.clone();
    let changed_args: Vec<String> = original
        .extra_args()
        .iter()
        .map(|a| {
            if a.ends_with("initrd.gz") {
                initrd.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    std::fs::write(&initrd, &bytes).unwrap();
    let copy = scratch
        .builder()
        .machine_type("pc")
        .accel(qemu_machine::Accel::KvmOrTcg)
        .console(None, 0);
    let copy = copy.args(changed_args.iter().skip(1).cloned());
    let same_content = cache.key(&copy, "guest# ").unwrap();
    bytes.push(0);
    std::fs::write(&initrd, &bytes).unwrap();
    let changed = cache.key(&copy, "guest# ").unwrap();
    assert_ne!(changed, same_content, "a changed initrd kept its key");
    assert_ne!(changed, key_before);
    assert!(
        cache.lookup(&copy, "guest# ").unwrap().is_none(),
        "a changed initrd hit the cache"
    );

    assert_eq!(cache.clean().unwrap(), 1);
    assert!(cache.list().unwrap().is_empty());
}
