//! The main job until the Machine crate lands: start `qemu-system-x86_64 -machine none` with
//! its monitor on a socketpair, negotiate, show the version and run state, show STOP/RESUME
//! from stop/cont, and quit.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use qmp::commands::{Cont, QueryStatus, Quit, Stop};
use qmp::{Client, EventFilter};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let binary = qemu_test_support::qemu();
    let (ours, theirs) = UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let mut command = Command::new(&binary);
    command
        .args(["-display", "none", "-nodefaults", "-machine", "none"])
        .args(["-chardev", &format!("socket,id=mon,fd={fd}")])
        .args(["-mon", "chardev=mon,mode=control"])
        .stdin(Stdio::null());
    // SAFETY: fcntl is async-signal-safe; it keeps QEMU's socket end open across exec.
    unsafe {
        command.pre_exec(move || {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {binary}: {e}"))?;
    drop(theirs);

    let client = Client::builder().adopt_unix(ours).await?;
    let greeting = client.greeting().ok_or("no greeting")?;
    println!(
        "connected: QEMU {} ({}), capabilities {:?}",
        greeting.version.qemu, greeting.version.package, greeting.capabilities
    );
    let status = client.call(&QueryStatus {}).await?;
    println!(
        "query-status: running={} status={}",
        status.running, status.status
    );

    let mut events = client.subscribe(EventFilter::names(["STOP", "RESUME"]));
    client.call(&Stop {}).await?;
    client.call(&Cont {}).await?;
    for _ in 0..2 {
        let event = events.recv_timeout(Duration::from_secs(5)).await?;
        println!("event: {event}");
    }

    client.call(&Quit {}).await?;
    let reason = client.closed().await;
    let exit = tokio::task::spawn_blocking(move || child.wait()).await??;
    println!("quit: session ended ({reason}), QEMU exited with {exit}");
    Ok(())
}
