//! qtest against real QEMU (memory, I/O ports, IRQ interception), and against a fake peer
//! for what this QEMU build cannot do (its Debian 7.2 has no qtest accelerator, so
//! `clock_step`/`clock_set` are refused) and for a late reply.

use qemu_test_support::machine as common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{Scratch, T};
use qemu_machine::qtest::{IrqEvent, Qtest};
use qemu_machine::{ErrorKind, Machine, Probe};

async fn qtest_machine(scratch: &Scratch) -> Machine {
    // -S: no vCPU runs, so nothing but us touches memory.
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("pc")
            .args(["-m", "128M", "-S"])
            .qtest(),
    );
    vm.launch().await.unwrap();
    vm
}

#[tokio::test]
async fn guest_ram_at_every_width_and_in_ranges() {
    let scratch = Scratch::new();
    let mut vm = qtest_machine(&scratch).await;
    let qt = vm.qtest().unwrap();
    let base = 0x10_0000;
    qt.writeb(base, 0xab).await.unwrap();
    assert_eq!(qt.readb(base).await.unwrap(), 0xab);
    qt.writew(base + 0x10, 0xbeef).await.unwrap();
    assert_eq!(qt.readw(base + 0x10).await.unwrap(), 0xbeef);
    qt.writel(base + 0x20, 0xdead_beef).await.unwrap();
    assert_eq!(qt.readl(base + 0x20).await.unwrap(), 0xdead_beef);
    assert_eq!(qt.readb(base + 0x20).await.unwrap(), 0xef, "little endian");
    qt.writeq(base + 0x30, 0x0123_4567_89ab_cdef).await.unwrap();
    assert_eq!(qt.readq(base + 0x30).await.unwrap(), 0x0123_4567_89ab_cdef);

    let data: Vec<u8> = (0..=255).collect();
    qt.write(base + 0x1000, &data).await.unwrap();
    assert_eq!(qt.read(base + 0x1000, 256).await.unwrap(), data);
    assert_eq!(qt.readl(base + 0x1000).await.unwrap(), 0x0302_0100);

    // CMOS RAM through I/O ports: index 0x34 is plain storage.
    qt.outb(0x70, 0x34).await.unwrap();
    qt.outb(0x71, 0x5a).await.unwrap();
    qt.outb(0x70, 0x34).await.unwrap();
    assert_eq!(qt.inb(0x71).await.unwrap(), 0x5a);

    let err = qt.cmd("bogus").await.unwrap();
    assert!(err.starts_with("FAIL"), "{err}");
    let err = qt.irq_intercept_in("/no/such/device").await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Qtest { .. }), "{err}");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_intercepted_irq_line_is_reported() {
    let scratch = Scratch::new();
    let mut vm = qtest_machine(&scratch).await;
    let qt = vm.qtest().unwrap();
    qt.irq_intercept_in("ioapic").await.unwrap();
    qt.set_irq_in("ioapic", None, 8, 1).await.unwrap();
    assert_eq!(
        qt.next_irq(T).await.unwrap(),
        IrqEvent {
            line: 8,
            raised: true
        }
    );
    qt.set_irq_in("ioapic", None, 8, 0).await.unwrap();
    assert_eq!(
        qt.next_irq(T).await.unwrap(),
        IrqEvent {
            line: 8,
            raised: false
        }
    );
    assert!(qt.irqs().is_empty());
    let err = qt.next_irq(Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout { .. }), "{err}");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_clock_needs_the_qtest_accelerator_and_says_so() {
    let probe = Probe::of(&common::qemu()).await.unwrap();
    let scratch = Scratch::new();
    let mut vm = qtest_machine(&scratch).await;
    let qt = vm.qtest().unwrap();
    if probe.qtest_accel() {
        let before = qt.clock_step(Some(1000)).await.unwrap();
        let after = qt.clock_step(Some(1000)).await.unwrap();
        assert_eq!(after, before + 1000);
    } else {
        let err = qt.clock_step(Some(1000)).await.unwrap_err();
        assert!(err.to_string().contains("qtest accelerator"), "{err}");
    }
    vm.shutdown().await.unwrap();
}

/// A fake qtest peer: answers each line with what `answer` says, or not at all.
fn fake_peer(
    answer: impl Fn(&str) -> Option<String> + Send + 'static,
) -> std::os::unix::net::UnixStream {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let mut writer = theirs.try_clone().unwrap();
        for line in BufReader::new(theirs).lines() {
            let Ok(line) = line else { break };
            if let Some(reply) = answer(&line) {
                if writer.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    ours
}

#[tokio::test]
async fn clock_commands_parse_under_the_qtest_accelerator() {
    let stream = fake_peer(|line| match line {
        "clock_step 1000" => Some("OK 1000\n".into()),
        "clock_step" => Some("IRQ raise 4\nOK 5000\n".into()),
        "clock_set 9000" => Some("OK 9000\n".into()),
        _ => Some("FAIL unexpected\n".into()),
    });
    let qt = Qtest::start("fake", stream, true).unwrap();
    assert_eq!(qt.clock_step(Some(1000)).await.unwrap(), 1000);
    assert_eq!(qt.clock_step(None).await.unwrap(), 5000);
    assert_eq!(qt.clock_set(9000).await.unwrap(), 9000);
    assert_eq!(
        qt.irqs(),
        [IrqEvent {
            line: 4,
            raised: true
        }]
    );
}

#[tokio::test]
async fn a_late_reply_is_discarded_and_the_next_command_gets_its_own() {
    let stream = fake_peer(|line| match line {
        "readb 0x1" => {
            std::thread::sleep(Duration::from_millis(300));
            Some("OK 0x11\n".into())
        }
        "readb 0x2" => Some("OK 0x22\n".into()),
        _ => None,
    });
    let qt = Qtest::start("fake", stream, false).unwrap();
    let err = qt
        .cmd_timeout("readb 0x1", Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout { .. }), "{err}");
    assert_eq!(qt.readb(2).await.unwrap(), 0x22);
}
